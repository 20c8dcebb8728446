//! Calls into local children: call_async, call_no_reply, pipelined call chains, shutdown.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mitogen::core::{Blob, Receiver, Sender};
use mitogen::master::{CallChain, ForkOptions, Options, Router};
use mitogen::select::Select;
use mitogen_tests::{run, WAIT};

static PUSHED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn push(v: u32) {
    PUSHED.lock().unwrap().push(v);
}

fn pushed() -> Vec<u32> {
    PUSHED.lock().unwrap().clone()
}

fn fail_with(msg: String) -> Result<(), std::io::Error> {
    Err(std::io::Error::other(msg))
}

fn slow_echo(ms: u64, v: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

/// Create the file `path`, then sleep `ms`.
fn mark_then_sleep(path: String, ms: u64) {
    std::fs::write(path, "").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
}

/// Send `0..n` through `sender`, in order, then close it.
fn stream_through(sender: Sender, n: u32) {
    for i in 0..n {
        sender.send(&i).unwrap();
    }
    sender.close();
}

fn echo_context(ctx: mitogen::core::Context) -> mitogen::core::Context {
    ctx
}

fn bytes_of_len(n: usize) -> Blob {
    Blob(vec![7; n])
}

mitogen::remote!(push, pushed, fail_with, slow_echo, mark_then_sleep, stream_through, echo_context, bytes_of_len);

#[test]
fn call_async_results_are_gathered_in_arrival_order() {
    run(|| {
        let router = Router::new(None).unwrap();
        let kids: Vec<_> = (0..3).map(|_| router.local(Options::default()).unwrap()).collect();
        // The first child is slowest: its answer arrives last (a second apart: the order holds
        // on a loaded machine).
        let recvs: Vec<_> = kids
            .iter()
            .enumerate()
            .map(|(i, k)| k.call_async(slow_echo, ((2 - i as u64) * 1000, i as u32)).unwrap())
            .collect();
        let got: Vec<u32> = Select::all(recvs).unwrap();
        assert_eq!(got, vec![2, 1, 0]);
        router.shutdown_and_join();
    });
}

#[test]
fn calls_run_in_order_and_call_no_reply_does_not_wait() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        for v in 0..50 {
            child.call_no_reply(push, (v,)).unwrap();
        }
        assert_eq!(child.call(pushed, ()).unwrap(), (0..50).collect::<Vec<_>>());
        assert_eq!(child.default_call_chain().context(), child.core());
        router.shutdown_and_join();
    });
}

#[test]
fn a_pipelined_chain_failure_is_sticky_until_reset() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let chain = CallChain::new(child.core().clone(), true);
        chain.call_no_reply(push, (1,)).unwrap();
        chain.call_no_reply(fail_with, ("first failure".to_string(),)).unwrap();
        chain.call_no_reply(push, (2,)).unwrap();
        let err = chain.call(pushed, ()).unwrap_err();
        assert!(err.is_call() && err.to_string().contains("first failure"), "{err}");
        // The call after the failure never ran; other chains are unaffected.
        assert_eq!(child.call(pushed, ()).unwrap(), vec![1]);
        chain.reset();
        assert_eq!(chain.call(pushed, ()).unwrap(), vec![1]);
        chain.call_no_reply(push, (3,)).unwrap();
        assert_eq!(chain.call(pushed, ()).unwrap(), vec![1, 3]);
        router.shutdown_and_join();
    });
}

#[test]
fn an_unpipelined_chain_does_not_remember_failures() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        assert!(child.call(fail_with, ("once".to_string(),)).unwrap_err().is_call());
        child.call(push, (7,)).unwrap();
        assert_eq!(child.call(pushed, ()).unwrap(), vec![7]);
        router.shutdown_and_join();
    });
}

#[test]
fn shutdown_waits_for_the_child_and_later_calls_fail_with_channel_error() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options::default()).unwrap();
        let b = router.local(Options::default()).unwrap();
        a.shutdown(true).unwrap(); // wait=true is what this test is about; nextest bounds it
        let err = a.call(pushed, ()).unwrap_err();
        assert!(err.is_channel(), "{err}");
        let latch = b.shutdown(false).unwrap();
        latch.get_timeout(WAIT).unwrap();
        assert!(b.call(pushed, ()).unwrap_err().is_channel());
        router.shutdown_and_join();
    });
}

#[test]
fn a_call_in_flight_when_the_child_is_killed_wakes_with_channel_error() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let pid = child.call(super::local_whoami, ()).unwrap().1;
        let recv = child.call_async(slow_echo, (60_000, 1)).unwrap();
        // SAFETY: killing our own child by pid; it is not reaped until its stream closes.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let err = recv.get_timeout(WAIT).unwrap_err();
        assert!(err.is_channel(), "{err}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_sender_passed_as_a_call_argument_streams_10000_values_in_order() {
    // Mitogen's documented data flow: remote.call(fn, recv.to_sender()).
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let recv = Receiver::new(&router).unwrap();
        let call = child.call_async(stream_through, (recv.to_sender(), 10_000)).unwrap();
        for i in 0..10_000u32 {
            assert_eq!(recv.get_data_timeout::<u32>(WAIT).unwrap(), i);
        }
        assert!(recv.get_timeout(WAIT).unwrap_err().is_channel(), "the child closed the sender");
        call.get_timeout(WAIT).unwrap().unpickle::<()>().unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn a_context_passed_as_a_call_argument_comes_back_equal() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options::default()).unwrap();
        let b = router.local(Options { name: Some("b".into()), ..Options::default() }).unwrap();
        let back = a.call(echo_context, (b.core().clone(),)).unwrap();
        assert_eq!(back, *b.core());
        assert_eq!((back.context_id(), back.name()), (b.context_id(), Some("b")));
        router.shutdown_and_join();
    });
}

#[test]
fn a_reply_larger_than_max_message_size_wakes_the_caller_with_a_channel_error() {
    run(|| {
        let router = Router::new(None).unwrap();
        router.set_max_message_size(1 << 20);
        let child = router.local(Options::default()).unwrap();
        let err = child.call(bytes_of_len, (2 << 20,)).unwrap_err();
        assert!(err.is_channel() && err.to_string().contains("too large"), "{err}");
        assert!(err.to_string().contains(&format!("{} bytes", 1 << 20)), "it names the limit: {err}");
        assert_eq!(child.call(bytes_of_len, (10,)).unwrap().0.len(), 10, "the child keeps working");
        router.shutdown_and_join();
    });
}

/// Whether `pid` has exited (gone, or a zombie waiting to be reaped).
fn exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map_or(true, |(_, rest)| rest.trim_start().starts_with('Z'))
}

#[test]
fn a_call_queued_when_the_childs_broker_exits_never_runs_as_an_orphan() {
    // The child's main thread is still in on_start, waiting for its broker to exit, when a call
    // arrives and its parent then disconnects: the broker exits with the call queued. The child
    // must end itself, not go on to run the call with no parent. It ignores SIGTERM, so the
    // parent's reaper cannot end it first (its SIGKILL comes seconds later): the call, had it
    // run, would have left its mark.
    run(|| {
        let mark = std::env::temp_dir().join(format!("mitogen-orphan-call-{}", std::process::id()));
        let router = Router::new(None).unwrap();
        let options = ForkOptions {
            on_start: Some(Arc::new(|ec: &mitogen::core::ExternalContext| {
                // SAFETY: setting a signal's disposition to ignore has no preconditions.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                let exited = Arc::new(mitogen::core::Latch::new());
                let e = exited.clone();
                ec.broker().on_exit(move || {
                    let _ = e.put(());
                });
                let _ = exited.get_timeout(WAIT);
            })),
            ..ForkOptions::default()
        };
        let child = router.fork(options).unwrap();
        let child_pid = child.name().unwrap().trim_start_matches("fork.").parse::<u32>().unwrap();
        child.call_no_reply(mark_then_sleep, (mark.display().to_string(), 60_000)).unwrap();
        router.disconnect(child.core()).unwrap();
        mitogen_tests::wait_until("the child to exit", WAIT, || exited(child_pid));
        assert!(!mark.exists(), "the queued call ran in the orphaned child");
        router.shutdown_and_join();
    });
}
