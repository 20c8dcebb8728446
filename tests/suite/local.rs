//! Local children: starting them from the test binary itself, calling functions, failures.

use std::time::Duration;

use mitogen::master::{Options, Router};
use mitogen_tests::run;

fn whoami() -> (u32, u32, Vec<u32>) {
    (mitogen::context_id(), std::process::id(), mitogen::parent_ids())
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn fails(path: String) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

fn panics(msg: String) -> u32 {
    panic!("{msg}")
}

mitogen::remote!(whoami, add, fails, panics);

#[test]
fn a_local_child_runs_the_test_binary_and_answers_calls() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let (id, pid, parents) = child.call(whoami, ()).unwrap();
        assert_eq!(id, child.context_id());
        assert_ne!(pid, std::process::id());
        assert_eq!(parents, vec![0]);
        assert_eq!(child.call(add, (2, 40)).unwrap(), 42);
        router.shutdown_and_join();
    });
}

#[test]
fn errors_and_panics_become_call_errors_and_the_child_keeps_serving() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let err = child.call(fails, ("/nonexistent/file".to_string(),)).unwrap_err();
        assert!(err.is_call() && err.to_string().contains("No such file"), "{err}");
        let err = child.call(panics, ("deliberate".to_string(),)).unwrap_err();
        let mitogen::Error::CallError(ce) = &err else { panic!("{err}") };
        assert_eq!(ce.type_name, "panic");
        assert!(ce.message.contains("deliberate"), "{ce:?}");
        assert!(!ce.traceback.is_empty(), "a remote backtrace");
        assert_eq!(child.call(add, (1, 1)).unwrap(), 2);
        let _ = Duration::ZERO;
        router.shutdown_and_join();
    });
}
