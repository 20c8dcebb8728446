//! fork(): copies of this process as children, hooks, and forking while other threads work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mitogen::core::Receiver;
use mitogen::master::{ForkOptions, Options, Router};
use mitogen_tests::{run, run_alone, WAIT};

use crate::fixtures::Pair;

static MARK: AtomicU32 = AtomicU32::new(0);

fn mark() -> u32 {
    MARK.load(Ordering::SeqCst)
}

mitogen::remote!(mark);

#[test]
fn a_forked_child_serves_calls_and_runs_its_hooks_in_the_child() {
    run(|| {
        MARK.store(1, Ordering::SeqCst);
        let router = Router::new(None).unwrap();
        let opts = ForkOptions {
            options: Options::default(),
            on_fork: Some(Arc::new(|| {
                MARK.fetch_add(10, Ordering::SeqCst);
            })),
            on_start: Some(Arc::new(|ec: &mitogen::core::ExternalContext| {
                MARK.fetch_add(100 * ec.config().context_id, Ordering::SeqCst);
            })),
        };
        let child = router.fork(opts).unwrap();
        let (id, pid, parents) = child.call(super::local_whoami, ()).unwrap();
        assert_eq!((id, parents), (child.context_id(), vec![0]));
        assert_ne!(pid, std::process::id());
        // The child inherited MARK = 1, then its hooks ran there, not here.
        assert_eq!(child.call(mark, ()).unwrap(), 1 + 10 + 100 * child.context_id());
        assert_eq!(mark(), 1);
        router.shutdown_and_join();
    });
}

#[test]
fn forking_200_children_while_other_threads_stream_messages_does_not_deadlock() {
    run_alone(|| {
        let pair = Pair::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Each streaming thread says when its first round trip is done: the forks start only
        // once both stream (on a loaded machine a new thread can wait a while to run).
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let streams: Vec<_> = (0..2)
            .map(|i| {
                let (from, to) = if i == 0 {
                    (pair.master.router.clone(), pair.child.router.clone())
                } else {
                    (pair.child.router.clone(), pair.master.router.clone())
                };
                let (stop, first_tx) = (stop.clone(), first_tx.clone());
                std::thread::spawn(move || {
                    let recv = Receiver::new(&to).unwrap();
                    let sender = mitogen::core::Sender::new(from.context_by_id(to.context_id()), recv.handle());
                    let mut n = 0u64;
                    loop {
                        sender.send(&n).unwrap();
                        assert_eq!(recv.get_data_timeout::<u64>(WAIT).unwrap(), n);
                        n += 1;
                        if n == 1 {
                            first_tx.send(()).unwrap();
                        }
                        if stop.load(Ordering::SeqCst) {
                            break n;
                        }
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            first_rx.recv_timeout(WAIT).expect("a streaming thread made its first round trip");
        }
        let router = Router::new(None).unwrap();
        for i in 0..200 {
            let child = router.fork(ForkOptions::default()).unwrap();
            assert_eq!(child.call(super::local_whoami, ()).unwrap().0, child.context_id(), "fork {i}");
            child.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for t in streams {
            t.join().unwrap();
        }
        router.shutdown_and_join();
    });
}

fn log_debug(text: String) {
    log::debug!("{text}");
}
mitogen::remote!(log_debug);

/// Set in the copy of this test binary that the test below starts as a master with no logger.
const NO_LOGGER: &str = "MITOGEN_TEST_MASTER_WITHOUT_A_LOGGER";

/// In a master with no `log` logger: fork once with `debug: true`, once after `enable_debug()`;
/// each fork logs a debug record. Prints each fork's pid.
fn fork_with_debug_in_a_master_without_a_logger() {
    let router = Router::new(None).unwrap();
    let debug = ForkOptions { options: Options { debug: true, ..Options::default() }, ..ForkOptions::default() };
    let first = router.fork(debug).unwrap();
    first.call(log_debug, ("logged by the fork with debug".to_owned(),)).unwrap();
    println!("MITOGEN-FORK {}", first.call(crate::local_whoami, ()).unwrap().1);
    router.enable_debug().unwrap();
    let second = router.fork(ForkOptions::default()).unwrap();
    second.call(log_debug, ("logged by the fork after enable_debug".to_owned(),)).unwrap();
    println!("MITOGEN-FORK {}", second.call(crate::local_whoami, ()).unwrap().1);
    router.shutdown_and_join();
}

#[test]
fn a_fork_of_a_master_without_a_logger_writes_its_debug_log() {
    // Issue 21: the fork silenced every logger but the child's, the library's own debug-file
    // logger included, so its debug log stayed empty. The harness installs a logger in every
    // test process; the master here is a copy of this binary that installs none.
    if std::env::var_os(NO_LOGGER).is_some() {
        return fork_with_debug_in_a_master_without_a_logger();
    }
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("fork-debug");
        let name = "fork::a_fork_of_a_master_without_a_logger_writes_its_debug_log";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(NO_LOGGER, "1")
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        // libtest may print its "test <name> ... " ahead of the first line on the same line.
        let pids: Vec<u32> =
            stdout.lines().filter_map(|l| l.split("MITOGEN-FORK ").nth(1)?.trim().parse().ok()).collect();
        assert_eq!(pids.len(), 2, "{stdout}");
        for (pid, text) in pids.iter().zip(["logged by the fork with debug", "logged by the fork after enable_debug"]) {
            let prefix = format!("mitogen.{pid}.");
            let logs: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
                .collect();
            assert_eq!(logs.len(), 1, "one debug log of fork {pid}: {logs:?}");
            let log = std::fs::read_to_string(&logs[0]).unwrap();
            assert!(log.contains(&format!("starting in pid {pid}")) && log.contains(text), "{log}");
        }
    });
}
