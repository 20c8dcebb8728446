//! The context tree: via= chains, routing through intermediates, lost subtrees, source
//! verification, unidirectional mode, disconnect and detach, malformed input from children.

use std::time::{Duration, Instant};

use mitogen::core::{ExternalContext, Message, Receiver, Sender, HEADER_LEN};
use mitogen::master::{Context, ForkOptions, Options, Router};
use mitogen_tests::{run, run_alone, WAIT};

use crate::local_whoami;

/// In a child: call `local_whoami` in context `id` and return its context id.
fn call_whoami_in(id: u32) -> Result<u32, mitogen::Error> {
    let ec = ExternalContext::current().expect("runs in a child");
    let ctx = Context::from(ec.router().context_by_id(id));
    ctx.call(local_whoami, ()).map(|t| t.0)
}

fn my_name() -> String {
    ExternalContext::current().map(|ec| ec.config().name.clone()).unwrap_or_default()
}

fn sleep_then(ms: u64, v: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

/// In a child: write `bytes` to its parent's stream, unframed, before this call's own answer
/// (which the parent, having dropped the stream at the bytes, never sees).
fn write_to_parent_now(bytes: Vec<u8>) {
    let ec = ExternalContext::current().expect("runs in a child");
    let stream = ec.router().stream_by_id(ec.parent().context_id()).expect("parent stream");
    let _ = stream.write_raw(&bytes);
}

/// In a child: say so on `started`, detach, and exit by itself once the file `go` exists (for at
/// most a minute), writing to `path` first its pid and its session before and after detaching
/// (Mitogen's async-task pattern: the caller learns of the start through a Sender).
fn detach_and_finish_later(started: Sender, path: String, go: String) {
    started.send(&std::process::id()).unwrap();
    // SAFETY: getsid(0) has no preconditions.
    let session = || unsafe { libc::getsid(0) };
    let before = session();
    ExternalContext::current().expect("runs in a child").detach().unwrap();
    assert!(mitogen::parent_ids().is_empty(), "a detached context has no parents");
    let after = session();
    std::thread::spawn(move || {
        mitogen_tests::wait_until("the test's go file", Duration::from_secs(60), || std::path::Path::new(&go).exists());
        std::fs::write(&path, format!("{} {before} {after}", std::process::id())).unwrap();
        std::process::exit(0);
    });
}

/// In a child: open a mailbox anyone may send to; when something arrives, say so on
/// `arrived` (and never answer it).
fn open_mailbox(arrived: Sender) -> Sender {
    let ec = ExternalContext::current().expect("runs in a child");
    let mailbox = Receiver::new(ec.router()).unwrap();
    let sender = mailbox.to_sender();
    std::thread::spawn(move || {
        if mailbox.get().is_ok() {
            arrived.send(&std::process::id()).unwrap();
        }
    });
    sender
}

/// In a leaf: post a reply address to `mailbox` (in a sibling) and wait for the answer, with
/// the sibling as the expected respondent; return how the wait ended.
fn wait_for_answer_from(mailbox: Sender) -> String {
    let ec = ExternalContext::current().expect("runs in a child");
    let reply = Receiver::with_options(ec.router(), None, true, Some(mailbox.context().clone())).unwrap();
    mailbox.send(&reply.to_sender()).unwrap();
    match reply.get() {
        Ok(_) => "answered".into(),
        Err(e) => format!("is_channel={}: {e}", e.is_channel()),
    }
}

mitogen::remote!(
    call_whoami_in,
    my_name,
    sleep_then,
    write_to_parent_now,
    detach_and_finish_later,
    open_mailbox,
    wait_for_answer_from
);

fn chain(router: &Router, depth: usize, fork_at: &[usize]) -> Vec<Context> {
    let mut out: Vec<Context> = Vec::new();
    for level in 0..depth {
        let options = Options { via: out.last().cloned(), ..Options::default() };
        let ctx = if fork_at.contains(&level) {
            router.fork(ForkOptions { options, ..ForkOptions::default() })
        } else {
            router.local(options)
        };
        out.push(ctx.unwrap_or_else(|e| panic!("level {level}: {e}")));
    }
    out
}

#[test]
fn a_chain_ten_deep_routes_calls_to_the_bottom() {
    run(|| {
        let router = Router::new(None).unwrap();
        let contexts = chain(&router, 10, &[]);
        let bottom = contexts.last().unwrap();
        let (id, pid, parents) = bottom.call(local_whoami, ()).unwrap();
        assert_eq!(id, bottom.context_id());
        assert_ne!(pid, std::process::id());
        let mut expected: Vec<u32> = contexts[..9].iter().rev().map(|c| c.context_id()).collect();
        expected.push(0);
        assert_eq!(parents, expected, "parent ids, nearest first");
        // Every level answers, and ids are distinct.
        let mut ids: Vec<u32> = contexts.iter().map(|c| c.call(local_whoami, ()).unwrap().0).collect();
        ids.dedup();
        assert_eq!(ids.len(), 10);
        router.shutdown_and_join();
    });
}

#[test]
fn mixed_chains_of_local_and_fork_work_and_names_chain() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let b = router
            .fork(ForkOptions {
                options: Options { name: Some("b".into()), via: Some(a.clone()), ..Options::default() },
                ..ForkOptions::default()
            })
            .unwrap();
        let c = router.local(Options { name: Some("c".into()), via: Some(b.clone()), ..Options::default() }).unwrap();
        assert_eq!(c.name(), Some("a.b.c"));
        assert_eq!(c.call(my_name, ()).unwrap(), "a.b.c");
        assert_eq!(c.call(local_whoami, ()).unwrap().2, vec![b.context_id(), a.context_id(), 0]);
        router.shutdown_and_join();
    });
}

#[test]
fn killing_an_intermediate_wakes_every_call_into_the_lost_subtree() {
    run(|| {
        let router = Router::new(None).unwrap();
        let contexts = chain(&router, 4, &[]);
        let victim_pid = contexts[1].call(local_whoami, ()).unwrap().1;
        let in_flight: Vec<_> = (0..3).map(|i| contexts[3].call_async(sleep_then, (60_000, i)).unwrap()).collect();
        let also_depth3 = contexts[2].call_async(sleep_then, (60_000, 9)).unwrap();
        let t0 = Instant::now();
        // SAFETY: killing a process of our own tree by pid.
        unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
        for r in in_flight.iter().chain([&also_depth3]) {
            let err = r.get_timeout(WAIT).unwrap_err();
            assert!(err.is_channel(), "{err}");
        }
        eprintln!("callers into the lost subtree woke after {:?}", t0.elapsed());
        // The part of the tree above the loss still works; the lost part fails at once.
        assert_eq!(contexts[0].call(local_whoami, ()).unwrap().0, contexts[0].context_id());
        assert!(contexts[3].call(local_whoami, ()).unwrap_err().is_channel());
        router.shutdown_and_join();
    });
}

#[test]
fn a_child_may_not_call_its_parent_or_a_sibling() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options::default()).unwrap();
        let b = router.local(Options { via: Some(a.clone()), ..Options::default() }).unwrap();
        let sibling = router.local(Options::default()).unwrap();
        // b -> a: a is b's parent, and b has no authority over it.
        let err = b.call(call_whoami_in, (a.context_id(),)).unwrap_err();
        assert!(err.to_string().contains("refused by policy"), "{err}");
        // a -> sibling: same level, no authority either.
        let err = a.call(call_whoami_in, (sibling.context_id(),)).unwrap_err();
        assert!(err.to_string().contains("refused by policy"), "{err}");
        // The parent may call both.
        assert_eq!(a.call(call_whoami_in, (b.context_id(),)).unwrap(), b.context_id());
        router.shutdown_and_join();
    });
}

#[test]
fn unidirectional_mode_stops_sibling_traffic_with_a_dead_reply() {
    run_alone(|| {
        let router = Router::new(None).unwrap();
        router.set_unidirectional(true);
        let a = router.local(Options::default()).unwrap();
        let b = router.local(Options::default()).unwrap();
        let err = a.call(call_whoami_in, (b.context_id(),)).unwrap_err();
        assert!(err.to_string().contains("is unidirectional"), "{err}");
        let errors = mitogen_tests::logged("mitogen_core::router");
        assert!(errors.iter().any(|(l, _, m)| *l == log::Level::Error && m.contains("unidirectional")), "{errors:?}");
        assert_eq!(a.call(local_whoami, ()).unwrap().0, a.context_id(), "the master still reaches both");
        router.shutdown_and_join();
    });
}

#[test]
fn disconnect_and_disconnect_all_drop_direct_children() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options::default()).unwrap();
        let b = router.local(Options::default()).unwrap();
        let c = router.local(Options { via: Some(b.clone()), ..Options::default() }).unwrap();
        router.disconnect(a.core()).unwrap();
        assert!(a.call(local_whoami, ()).unwrap_err().is_channel());
        assert_eq!(c.call(local_whoami, ()).unwrap().0, c.context_id());
        router.disconnect_all().unwrap();
        assert!(b.call(local_whoami, ()).unwrap_err().is_channel());
        assert!(c.call(local_whoami, ()).unwrap_err().is_channel(), "its subtree went with it");
        router.shutdown_and_join();
    });
}

#[test]
fn a_detached_child_keeps_running_after_the_master_exits() {
    run_alone(|| {
        let dir = std::env::temp_dir().join(format!("mitogen-detach-{}", std::process::id()));
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let pid = child.call(local_whoami, ()).unwrap().1 as i32;
        let started = Receiver::new(&router).unwrap();
        let go = dir.with_extension("go");
        let call = child.call_async(
            detach_and_finish_later,
            (started.to_sender(), dir.display().to_string(), go.display().to_string()),
        );
        assert_eq!(started.get_data_timeout::<u32>(WAIT).unwrap(), pid as u32);
        // The detaching call never answers: the child disconnected from its parent.
        assert!(call.unwrap().get_timeout(WAIT).unwrap_err().is_channel());
        router.shutdown_and_join();
        assert!(!dir.exists(), "the child had not finished when the master exited");
        std::fs::write(&go, "").unwrap();
        // The detached child outlived the master's broker and finishes its work on its own.
        let mut status = 0;
        // SAFETY: waiting for our own child; a valid out-pointer.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(reaped, pid);
        // It left the master's session for one of its own (`setsid`), though it was the
        // leader of its own process group.
        // SAFETY: getsid(0) has no preconditions.
        let ours = unsafe { libc::getsid(0) };
        assert_eq!(std::fs::read_to_string(&dir).unwrap(), format!("{pid} {ours} {pid}"), "pid, session before, after");
        std::fs::remove_file(&dir).unwrap();
        std::fs::remove_file(&go).unwrap();
    });
}

fn assert_disconnected_for(bytes: Vec<u8>, what: &str) {
    let router = Router::new(None).unwrap();
    let bad = router.local(Options::default()).unwrap();
    let good = router.local(Options::default()).unwrap();
    let recv = bad.call_async(write_to_parent_now, (bytes,)).unwrap();
    // The call never answers: the master drops the stream when the bytes arrive, before it.
    let err = recv.get_timeout(WAIT).unwrap_err();
    assert!(err.is_channel(), "{what}: {err}");
    let logged = mitogen_tests::logged("mitogen_core::stream");
    assert!(
        logged.iter().any(|(l, _, m)| *l == log::Level::Error && m.contains("disconnecting")),
        "{what}: {logged:?}"
    );
    assert_eq!(good.call(local_whoami, ()).unwrap().0, good.context_id(), "{what}: others go on");
    router.shutdown_and_join();
}

#[test]
fn a_child_writing_garbage_is_disconnected_and_the_rest_go_on() {
    run_alone(|| assert_disconnected_for(b"\x00garbage that is not a frame at all\n".repeat(4), "garbage"));
}

#[test]
fn a_child_writing_a_bad_magic_is_disconnected() {
    run_alone(|| {
        let mut frame = Message::raw(1000, vec![1, 2, 3]).header().to_vec();
        frame[0] = b'X';
        frame.extend_from_slice(&[1, 2, 3]);
        assert_disconnected_for(frame, "bad magic")
    });
}

#[test]
fn a_child_announcing_an_oversized_frame_is_disconnected() {
    run_alone(|| {
        let mut header = Message::raw(1000, vec![]).header();
        header[22..HEADER_LEN].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_disconnected_for(header.to_vec(), "oversized frame")
    });
}

fn log_a_warning(text: String) {
    log::warn!("{text}");
}

mitogen::remote!(log_a_warning);

#[test]
fn a_fork_of_an_intermediate_gets_its_own_ids_and_logs_through_its_own_context() {
    run_alone(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let options = Options { name: Some("f".into()), via: Some(a.clone()), ..Options::default() };
        let f = router.fork(ForkOptions { options, ..ForkOptions::default() }).unwrap();
        // a already holds a block of ids; its fork must not hand out the same ones.
        let from_a = router.local(Options { via: Some(a.clone()), ..Options::default() }).unwrap();
        let from_f = router.local(Options { via: Some(f.clone()), ..Options::default() }).unwrap();
        let ids = [a.context_id(), f.context_id(), from_a.context_id(), from_f.context_id()];
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "ids {ids:?}");
        assert_eq!(from_f.call(local_whoami, ()).unwrap().0, from_f.context_id());
        // The fork inherited a's logger; its records still arrive, under its own name.
        f.call(log_a_warning, ("from the fork".to_string(),)).unwrap();
        f.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        let got = mitogen_tests::logged("mitogen::ctx::a.f");
        assert!(got.iter().any(|(_, _, m)| m.ends_with("from the fork")), "{got:?}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_leaf_waiting_on_a_lost_sibling_wakes_with_a_channel_error() {
    // a has no children of its own; the master tells it b is gone with DEL_ROUTE.
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let b = router.local(Options { name: Some("b".into()), ..Options::default() }).unwrap();
        let arrived = Receiver::new(&router).unwrap();
        let mailbox = b.call(open_mailbox, (arrived.to_sender(),)).unwrap();
        let waiting = a.call_async(wait_for_answer_from, (mailbox,)).unwrap();
        let b_pid = arrived.get_data_timeout::<u32>(WAIT).unwrap();
        // SAFETY: b is our own child, alive (it just answered); SIGKILL has no preconditions.
        assert_eq!(unsafe { libc::kill(b_pid as i32, libc::SIGKILL) }, 0);
        let outcome: String = waiting.get_timeout(WAIT).unwrap().unpickle().unwrap();
        assert!(outcome.starts_with("is_channel=true"), "{outcome}");
        assert_eq!(a.call(local_whoami, ()).unwrap().0, a.context_id(), "a goes on");
        router.shutdown_and_join();
    });
}

#[test]
fn a_connect_that_fails_inside_a_via_context_keeps_its_kind_and_names_where() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let silent = Options {
            via: Some(a.clone()),
            command_prefix: vec!["sh".into(), "-c".into(), "sleep 60".into(), "--".into()],
            connect_timeout: Duration::from_millis(300),
            ..Options::default()
        };
        let err = router.local(silent).unwrap_err();
        assert!(err.is_timeout(), "a timeout stays a TimeoutError: {err}");
        assert!(err.to_string().contains("error occurred on host") && err.to_string().contains("\"a\""), "{err}");
        let dies = Options {
            via: Some(a.clone()),
            command_prefix: vec!["sh".into(), "-c".into(), "echo gone >&2".into(), "--".into()],
            ..Options::default()
        };
        let err = router.local(dies).unwrap_err();
        assert!(err.is_stream() && err.to_string().contains("gone"), "end of output stays a StreamError: {err}");
        assert_eq!(a.call(local_whoami, ()).unwrap().0, a.context_id(), "a goes on");
        router.shutdown_and_join();
    });
}
