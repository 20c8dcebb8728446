//! Lifetimes: children die with their parent, shutdown reaps everything, stubborn children are
//! killed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mitogen::core::{Broker, BrokerOptions, ExternalContext};
use mitogen::master::{ForkOptions, Options, Router};
use mitogen_tests::{run, run_alone, WAIT};

/// Routers started inside a child by `start_grandchildren`, kept alive there.
static KEPT: Mutex<Vec<Router>> = Mutex::new(Vec::new());

/// In a child: become the master of a separate tree and start `n` local children of our own.
fn start_grandchildren(n: u32) -> Vec<u32> {
    let router = Router::new(None).unwrap();
    let pids =
        (0..n).map(|_| router.local(Options::default()).unwrap().call(super::local_whoami, ()).unwrap().1).collect();
    KEPT.lock().unwrap().push(router);
    pids
}

/// In a child: ignore SIGTERM and wedge the broker thread, so the child can neither hear
/// SHUTDOWN nor notice its parent leaving.
fn wedge() {
    // SAFETY: ignoring a signal has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let ec = ExternalContext::current().unwrap();
    ec.broker().defer(|| std::thread::sleep(Duration::from_secs(120))).unwrap();
}

mitogen::remote!(start_grandchildren, wedge);

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // An orphan reparented to a PID 1 that does not reap stays a zombie: it has exited.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn children_exit_when_their_parent_is_killed() {
    run(|| {
        let router = Router::new(None).unwrap();
        let parent = router.fork(ForkOptions::default()).unwrap();
        let parent_pid = parent.call(super::local_whoami, ()).unwrap().1;
        let kids = parent.call(start_grandchildren, (3,)).unwrap();
        assert_eq!(kids.len(), 3);
        assert!(kids.iter().all(|&p| !gone(p)));
        // SAFETY: killing our own child by pid; it is reaped once its stream closes.
        unsafe { libc::kill(parent_pid as i32, libc::SIGKILL) };
        let t0 = Instant::now();
        while !kids.iter().all(|&p| gone(p)) {
            assert!(t0.elapsed() < WAIT, "children of a killed parent still running after {:?}", t0.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("children of a SIGKILLed parent gone after {:?}", t0.elapsed());
        router.shutdown_and_join();
    });
}

#[test]
fn shutting_down_the_master_reaps_every_child() {
    run(|| {
        let router = Router::new(None).unwrap();
        let pids: Vec<u32> = (0..4)
            .map(|_| router.local(Options::default()).unwrap().call(super::local_whoami, ()).unwrap().1)
            .collect();
        router.shutdown_and_join();
        // The harness fails the test if any of them is still our (unreaped) child.
        assert!(pids.iter().all(|&p| gone(p)));
    });
}

#[test]
fn a_child_that_ignores_shutdown_and_sigterm_is_killed() {
    run_alone(|| {
        let broker =
            Broker::with_options(BrokerOptions { shutdown_timeout: Duration::from_millis(200), ..Default::default() })
                .unwrap();
        let router = Router::new(Some(&broker)).unwrap();
        let child = router.local(Options::default()).unwrap();
        child.call(wedge, ()).unwrap();
        router.shutdown_and_join();
        let warned = mitogen_tests::logged("mitogen_parent").iter().any(|(_, _, m)| m.contains("ignored SIGTERM"));
        assert!(warned, "the reaper escalated to SIGKILL");
    });
}

#[test]
fn a_child_whose_broker_is_wedged_still_exits_when_its_parent_is_killed() {
    // Issue 20: children whose broker deadlocked outlived their master for hours. The
    // watchdog thread sees the parent's end hang up and ends the process itself.
    run(|| {
        let router = Router::new(None).unwrap();
        let parent = router.local(Options::default()).unwrap();
        let parent_pid = parent.call(super::local_whoami, ()).unwrap().1;
        let child = router.local(Options { via: Some(parent.clone()), ..Options::default() }).unwrap();
        let child_pid = child.call(super::local_whoami, ()).unwrap().1;
        // Readable once the child has exited (a zombie included), whoever its parent is then.
        let exited = mitogen::core::sys::pidfd_open(child_pid as i32).unwrap();
        // Its broker now sleeps for 120 s: it cannot notice anything.
        child.call(wedge, ()).unwrap();
        // SAFETY: killing our own child by pid; it is reaped once its stream closes.
        unsafe { libc::kill(parent_pid as i32, libc::SIGKILL) };
        let t0 = Instant::now();
        // The watchdog's grace is 10 s (40 s for a profiled child: when tests share a process,
        // an earlier one may have turned profiling on for every later child); the broker would
        // sleep for 120 s.
        let deadline = t0 + Duration::from_secs(60);
        while !mitogen::core::sys::wait_readable(std::os::fd::AsFd::as_fd(&exited), Some(deadline)).unwrap() {
            assert!(Instant::now() < deadline, "a wedged orphan still runs after {:?}", t0.elapsed());
        }
        eprintln!("the wedged child of a SIGKILLed parent gone after {:?}", t0.elapsed());
        router.shutdown_and_join();
    });
}
