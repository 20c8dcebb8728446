//! fork() while other threads hold or hammer process-wide state: the child must come up and
//! answer calls (see `mitogen_parent`'s fork module for what a forked child may touch). Each
//! test names the state another thread is busy with at the instant of the fork.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mitogen::core::{ExternalContext, Message};
use mitogen::master::{ForkOptions, Options, Router};
use mitogen_tests::{run, run_alone, WAIT};

/// Forks per deterministic test: enough for the busy thread to be inside its critical section
/// at some fork with near certainty (each fork takes a few milliseconds).
const FORKS: usize = 40;

/// A thread that runs `work` in a loop until the returned flag is set; returns once it has
/// done `work` once, so the forks that follow all find it busy (on a loaded machine a new
/// thread can wait a long while to run: the forks must not be over by then).
fn hammer(name: &str, work: impl Fn() + Send + 'static) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut n = 0u64;
            loop {
                work();
                n += 1;
                if n == 1 {
                    first_tx.send(()).unwrap();
                }
                if s.load(Ordering::Relaxed) {
                    break n;
                }
            }
        })
        .unwrap();
    first_rx.recv_timeout(WAIT).unwrap_or_else(|e| panic!("the {name} thread did its work once: {e}"));
    (stop, t)
}

fn stop_all(hammers: Vec<(Arc<AtomicBool>, JoinHandle<u64>)>) {
    for (stop, _) in &hammers {
        stop.store(true, Ordering::Relaxed);
    }
    for (_, t) in hammers {
        t.join().unwrap();
    }
}

/// Fork `n` children one after another; each must answer `probe` and then shut down.
fn fork_and_call(router: &Router, n: usize, probe: impl Fn(&mitogen::master::Context)) {
    for i in 0..n {
        let child = router.fork(ForkOptions::default()).unwrap_or_else(|e| panic!("fork {i}: {e}"));
        probe(&child);
        child.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
    }
}

fn answer() -> u32 {
    42
}

fn print_and_log() -> u32 {
    println!("printed in the child");
    eprintln!("printed on stderr in the child");
    log::info!("logged in the child");
    7
}

fn panic_in_child() -> u32 {
    panic!("boom in the child")
}

/// What descriptor number `fd` refers to in this process, as `/proc/self/fd` says.
fn describe_fd(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string())
}

mitogen::remote!(answer, print_and_log, panic_in_child, describe_fd);

/// A quiet panic hook for the hammering threads only: their panics are expected by the
/// thousand. Every other thread keeps the hook installed before.
fn quiet_panics_in(thread_name: &'static str) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(thread_name) {
            previous(info);
        }
    }));
}

#[test]
fn a_fork_while_another_thread_builds_messages_comes_up() {
    // Every Message reads the process identity, which the forked child then replaces.
    run(|| {
        let router = Router::new(None).unwrap();
        let h = hammer("hammer-identity", || {
            std::hint::black_box(Message::new());
        });
        fork_and_call(&router, FORKS, |c| assert_eq!(c.call(answer, ()).unwrap(), 42));
        stop_all(vec![h]);
        router.shutdown_and_join();
    });
}

#[test]
fn a_fork_while_another_thread_panics_comes_up_and_reports_panics() {
    // A panicking thread holds std's panic-hook lock; the child must not set a hook of its own.
    run(|| {
        quiet_panics_in("hammer-panic");
        let router = Router::new(None).unwrap();
        let h = hammer("hammer-panic", || {
            let _ = std::panic::catch_unwind(|| panic!("expected"));
        });
        fork_and_call(&router, FORKS, |c| {
            let err = c.call(panic_in_child, ()).unwrap_err();
            assert!(err.to_string().contains("boom in the child"), "{err}");
            assert_eq!(c.call(answer, ()).unwrap(), 42);
        });
        stop_all(vec![h]);
        router.shutdown_and_join();
    });
}

#[test]
fn a_fork_while_another_thread_captures_backtraces_can_panic_in_the_child() {
    // std's backtrace lock: a forked child's panic must not wait for it.
    run(|| {
        let router = Router::new(None).unwrap();
        let h = hammer("hammer-backtrace", || {
            let _ = std::hint::black_box(std::backtrace::Backtrace::force_capture());
        });
        fork_and_call(&router, FORKS / 4, |c| {
            let err = c.call(panic_in_child, ()).unwrap_err();
            assert!(err.to_string().contains("no backtrace: a forked child"), "{err}");
        });
        stop_all(vec![h]);
        router.shutdown_and_join();
    });
}

#[test]
fn a_fork_while_other_threads_print_and_log_can_print_and_log_in_the_child() {
    // std's stdout and stderr locks, and the program's logger (the harness's, with a mutex).
    run(|| {
        let router = Router::new(None).unwrap();
        let hammers = vec![
            hammer("hammer-stdout", || print!("")),
            hammer("hammer-stderr", || eprint!("")),
            hammer("hammer-log", || log::info!(target: "mitogen_tests::hammer", "")),
        ];
        fork_and_call(&router, FORKS, |c| assert_eq!(c.call(print_and_log, ()).unwrap(), 7));
        stop_all(hammers);
        router.shutdown_and_join();
    });
}

#[test]
fn a_fork_while_another_thread_sets_environment_variables_comes_up() {
    // std's environment lock: starting the child's broker thread must not take it.
    run_alone(|| {
        let router = Router::new(None).unwrap();
        let h = hammer("hammer-env", || std::env::set_var("MITOGEN_TEST_HAMMER", "1"));
        fork_and_call(&router, FORKS, |c| assert_eq!(c.call(answer, ()).unwrap(), 42));
        stop_all(vec![h]);
        router.shutdown_and_join();
    });
}

#[test]
fn an_inherited_descriptor_number_is_dev_null_in_a_forked_child_never_reused() {
    // A logger's file stays open under its number in the parent; in the child that number must
    // not come back as one of the child's own sockets, where the logger's writes would land.
    run(|| {
        let path = std::env::temp_dir().join(format!("mitogen-fork-fd-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let router = Router::new(None).unwrap();
        fork_and_call(&router, 3, |c| assert_eq!(c.call(describe_fd, (fd,)).unwrap(), "/dev/null"));
        router.shutdown_and_join();
        drop(file);
        std::fs::remove_file(&path).unwrap();
    });
}

/// In a context: take context ids from its block in a loop on another thread, `n` times.
fn allocate_ids_in_background(n: u32) {
    let ec = ExternalContext::current().expect("runs in a child");
    let router = ec.router().clone();
    std::thread::spawn(move || {
        for _ in 0..n {
            mitogen::parent::allocate_child_id(&router).unwrap();
        }
    });
}

mitogen::remote!(allocate_ids_in_background);

#[test]
fn forks_of_an_intermediate_that_is_allocating_ids_can_start_children() {
    // The intermediate's block of ids is taken while it waits for the master's answer; its
    // forks inherit that state and must still allocate ids of their own.
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options::default()).unwrap();
        a.call(allocate_ids_in_background, (1_000_000,)).unwrap();
        for i in 0..10 {
            let options = Options { via: Some(a.clone()), ..Options::default() };
            let f = router.fork(ForkOptions { options, ..ForkOptions::default() }).unwrap();
            let options = Options { via: Some(f.clone()), connect_timeout: WAIT, ..Options::default() };
            let g = router.local(options).unwrap_or_else(|e| panic!("child of fork {i}: {e}"));
            assert_eq!(g.call(super::local_whoami, ()).unwrap().0, g.context_id());
            f.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        }
        router.shutdown_and_join();
    });
}

#[test]
fn two_thousand_forks_while_four_threads_message_log_print_and_panic() {
    run(|| {
        quiet_panics_in("stress-panic");
        let pair = crate::fixtures::Pair::new();
        let (from, to) = (pair.master.router.clone(), pair.child.router.clone());
        let recv = mitogen::core::Receiver::new(&to).unwrap();
        let sender = mitogen::core::Sender::new(from.context_by_id(to.context_id()), recv.handle());
        let hammers = vec![
            hammer("stress-message", move || {
                sender.send(&1u64).unwrap();
                recv.get_data_timeout::<u64>(WAIT).unwrap();
            }),
            hammer("stress-log", || log::info!(target: "mitogen_tests::hammer", "")),
            hammer("stress-print", || {
                print!("");
                eprint!("");
            }),
            hammer("stress-panic", || {
                let _ = std::panic::catch_unwind(|| panic!("expected"));
            }),
        ];
        let router = Router::new(None).unwrap();
        let started = std::time::Instant::now();
        fork_and_call(&router, 2000, |c| assert_eq!(c.call(answer, ()).unwrap(), 42));
        eprintln!("2000 forks in {:?}", started.elapsed());
        stop_all(hammers);
        router.shutdown_and_join();
        drop(pair);
    });
}

#[test]
fn a_profiled_process_whose_threads_unwind_panics_and_take_backtraces_keeps_forking() {
    // A sample that interrupts the stack unwinder must not walk from inside it (it crashed
    // this process within seconds before such samples were skipped).
    run_alone(|| {
        quiet_panics_in("profiled-panic");
        let router = Router::new(None).unwrap();
        router.enable_profiling().unwrap();
        let hammers = vec![
            hammer("profiled-panic", || {
                let _ = std::panic::catch_unwind(|| panic!("expected"));
            }),
            hammer("profiled-backtrace", || {
                let _ = std::hint::black_box(std::backtrace::Backtrace::force_capture());
            }),
        ];
        let since = crate::unix_now();
        let pids = std::sync::Mutex::new(vec![std::process::id()]);
        fork_and_call(&router, 600, |c| pids.lock().unwrap().push(c.call(crate::local_whoami, ()).unwrap().1));
        stop_all(hammers);
        // Every forked child wrote its own profile on its way out, and was reaped.
        router.shutdown_and_join();
        let dir = mitogen::core::sys::temp_dir();
        let profiles: Vec<_> =
            pids.into_inner().unwrap().iter().map(|&pid| (pid, crate::profiles_of(&dir, pid, since))).collect();
        // Pids are reused quickly when another test starts threads by the thousand (threads take
        // pids too): two children of the same pid in the same second write one file.
        let mut files: Vec<_> = profiles.iter().flat_map(|(_, p)| p.values().cloned()).collect();
        files.sort();
        files.dedup();
        let merged = mitogen::profiler::merge(&files);
        files.iter().for_each(|f| std::fs::remove_file(f).unwrap());
        for (pid, profile) in &profiles {
            assert!(profile.contains_key("main"), "pid {pid} wrote its main thread's profile: {profile:?}");
        }
        let merged = merged.unwrap();
        assert!(merged.keys().any(|s| s.starts_with("profiled-panic;")), "the panicking thread was sampled");
    });
}

/// Threads that start and end empty threads in a loop, as a thread pool does: std's thread
/// start and end take a process-wide lock of std's, which one of them holds at many forks.
fn thread_churn(n: usize) -> Vec<(Arc<AtomicBool>, JoinHandle<u64>)> {
    (0..n)
        .map(|i| {
            hammer(&format!("churn-{i}"), || {
                std::thread::Builder::new().stack_size(64 << 10).spawn(|| ()).unwrap().join().unwrap();
            })
        })
        .collect()
}

#[test]
fn forks_while_other_threads_start_and_end_threads_come_up_and_answer() {
    // Before the child's own threads were started without std (issue 33), about one fork in a
    // few hundred made a child whose broker and watchdog never ran: connected by its hello,
    // then silent for ever.
    run(|| {
        let router = Router::new(None).unwrap();
        let churn = thread_churn(6);
        let started = std::time::Instant::now();
        for i in 0..FORKS_UNDER_CHURN {
            let options = Options { connect_timeout: WAIT, ..Options::default() };
            let child = router
                .fork(ForkOptions { options, ..ForkOptions::default() })
                .unwrap_or_else(|e| panic!("fork {i}: {e}"));
            let answer = child.call_async(answer, ()).unwrap().get_timeout(WAIT);
            let answer = answer.unwrap_or_else(|e| panic!("fork {i} connected, then did not answer: {e}"));
            assert_eq!(answer.unpickle::<u32>().unwrap(), 42);
            child.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        }
        eprintln!("{FORKS_UNDER_CHURN} forks under thread churn in {:?}", started.elapsed());
        stop_all(churn);
        router.shutdown_and_join();
    });
}

/// Forks of the thread-churn test: enough to hit the old defect several times over.
const FORKS_UNDER_CHURN: usize = 1500;

#[test]
fn a_forked_child_whose_broker_cannot_start_fails_the_connect_within_connect_timeout() {
    // The test hook makes the forked child's threads never run (what std's thread-start lock,
    // held at the fork, did): the parent must not be handed that child, and nothing is left.
    run(|| {
        let router = Router::new(None).unwrap();
        mitogen::core::sys::thread::hang_thread_starts_in_forks_of_this_thread(true);
        let connect_timeout = std::time::Duration::from_secs(2);
        let t0 = std::time::Instant::now();
        let options = Options { connect_timeout, ..Options::default() };
        let result = router.fork(ForkOptions { options, ..ForkOptions::default() });
        let took = t0.elapsed();
        mitogen::core::sys::thread::hang_thread_starts_in_forks_of_this_thread(false);
        let err = result.expect_err("a child with no broker is not a context");
        assert!(err.is_timeout(), "{err}");
        assert!(took < connect_timeout + std::time::Duration::from_secs(5), "failed after {took:?}");
        // The same thread forks a working child afterwards.
        let child = router.fork(ForkOptions::default()).unwrap();
        assert_eq!(child.call(answer, ()).unwrap(), 42);
        router.shutdown_and_join();
    });
}

#[test]
fn a_forked_child_whose_broker_cannot_start_says_so_and_exits_by_itself() {
    // With a connect_timeout longer than the child's wait for its broker thread, the child
    // gives up first: it exits, and the parent's error carries what the child wrote.
    run(|| {
        let router = Router::new(None).unwrap();
        mitogen::core::sys::thread::hang_thread_starts_in_forks_of_this_thread(true);
        let t0 = std::time::Instant::now();
        let options = Options { connect_timeout: WAIT, ..Options::default() };
        let result = router.fork(ForkOptions { options, ..ForkOptions::default() });
        let took = t0.elapsed();
        mitogen::core::sys::thread::hang_thread_starts_in_forks_of_this_thread(false);
        let err = result.expect_err("a child with no broker is not a context");
        assert!(err.is_stream() && !err.is_timeout(), "{err}");
        let text = err.to_string();
        assert!(text.contains("broker") && text.contains("did not run within"), "{text}");
        assert!(took >= mitogen::core::sys::thread::START_TIMEOUT && took < WAIT, "failed after {took:?}");
        router.shutdown_and_join();
    });
}
