//! fork() while other threads hold or hammer process-wide state: the child must come up and
//! answer calls (see `mitogen_parent`'s fork module for what a forked child may touch). Each
//! test names the state another thread is busy with at the instant of the fork.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mitogen::core::{ExternalContext, Message};
use mitogen::master::{ForkOptions, Options, Router};
use mitogen_tests::{run, WAIT};

/// Forks per deterministic test: enough for the busy thread to be inside its critical section
/// at some fork with near certainty (each fork takes a few milliseconds).
const FORKS: usize = 40;

/// A thread that runs `work` in a loop until the returned flag is set.
fn hammer(name: &str, work: impl Fn() + Send + 'static) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                work();
                n += 1;
            }
            n
        })
        .unwrap();
    (stop, t)
}

fn stop_all(hammers: Vec<(Arc<AtomicBool>, JoinHandle<u64>)>) {
    for (stop, _) in &hammers {
        stop.store(true, Ordering::Relaxed);
    }
    for (_, t) in hammers {
        assert!(t.join().unwrap() > 0, "the busy thread made progress");
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
    run(|| {
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
    run(|| {
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
        let files: Vec<_> = profiles.iter().flat_map(|(_, p)| p.values().cloned()).collect();
        let merged = mitogen::profiler::merge(&files);
        files.iter().for_each(|f| std::fs::remove_file(f).unwrap());
        for (pid, profile) in &profiles {
            assert!(profile.contains_key("main"), "pid {pid} wrote its main thread's profile: {profile:?}");
        }
        let merged = merged.unwrap();
        assert!(merged.keys().any(|s| s.starts_with("profiled-panic;")), "the panicking thread was sampled");
    });
}
