//! Calls into local children: call_async, call_no_reply, pipelined call chains, shutdown.

use std::sync::Mutex;
use std::time::Duration;

use mitogen::master::{CallChain, Options, Router};
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

mitogen::remote!(push, pushed, fail_with, slow_echo);

#[test]
fn call_async_results_are_gathered_in_arrival_order() {
    run(|| {
        let router = Router::new(None).unwrap();
        let kids: Vec<_> = (0..3).map(|_| router.local(Options::default()).unwrap()).collect();
        // The first child is slowest: its answer arrives last.
        let recvs: Vec<_> = kids
            .iter()
            .enumerate()
            .map(|(i, k)| k.call_async(slow_echo, ((2 - i as u64) * 150, i as u32)).unwrap())
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
