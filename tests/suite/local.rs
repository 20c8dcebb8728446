//! Local children: starting them from the test binary itself, calling functions, failures.

use std::time::Duration;

use mitogen::core::StreamErrorKind;
use mitogen::master::{Options, Router};
use mitogen_tests::{run, run_alone, WAIT};

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

fn print_lines(lines: Vec<String>) {
    for l in lines {
        println!("{l}");
    }
    eprintln!("and one on stderr");
    log::warn!("a log record from the child");
}

fn env_var(name: String) -> Option<String> {
    std::env::var(name).ok()
}

fn econtext_name() -> Option<String> {
    mitogen::core::ExternalContext::current().map(|ec| ec.config().name.clone())
}

fn process_title() -> String {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
    String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap()).into_owned()
}

mitogen::remote!(print_lines, env_var, econtext_name, process_title);

#[test]
fn child_stdout_stderr_and_logs_become_records_of_that_context_at_the_master() {
    run_alone(|| {
        let router = Router::new(None).unwrap();
        let opts = Options { name: Some("printer".into()), ..Options::default() };
        let child = router.local(opts).unwrap();
        child.call(print_lines, (vec!["first line".to_string(), "second line".to_string()],)).unwrap();
        // Records arrive asynchronously: the shutdown drains the child's stream first.
        child.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        router.shutdown_and_join();
        let got: Vec<String> = mitogen_tests::logged("mitogen::ctx::printer").into_iter().map(|(_, _, m)| m).collect();
        for want in ["stdout: first line", "stdout: second line", "stderr: and one on stderr"] {
            assert!(got.iter().any(|m| m == want), "missing {want:?} in {got:?}");
        }
        assert!(got.iter().any(|m| m.ends_with(": a log record from the child")), "{got:?}");
    });
}

#[test]
fn an_unknown_function_path_is_a_call_error_naming_it() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options::default()).unwrap();
        let data = mitogen::core::encode_call_by_path("no::such::function", &(), None).unwrap();
        let msg = mitogen::core::Message::raw(mitogen::core::CALL_FUNCTION, data);
        let err = child.send_await::<()>(msg, Some(mitogen_tests::WAIT)).unwrap_err();
        assert!(err.is_call() && err.to_string().contains("\"no::such::function\""), "{err}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_function_can_ask_for_its_external_context() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options { name: Some("named".into()), ..Options::default() }).unwrap();
        assert_eq!(child.call(econtext_name, ()).unwrap().as_deref(), Some("named"));
        assert_eq!(econtext_name(), None, "the master has no ExternalContext");
        router.shutdown_and_join();
    });
}

#[test]
fn remote_name_sets_the_process_title_and_may_not_contain_a_slash() {
    run(|| {
        let router = Router::new(None).unwrap();
        let child = router.local(Options { remote_name: Some("titled".into()), ..Options::default() }).unwrap();
        assert_eq!(child.call(process_title, ()).unwrap(), "mitogen:titled");
        let default = router.local(Options::default()).unwrap();
        let title = default.call(process_title, ()).unwrap();
        assert!(title.ends_with(&format!(":{}", std::process::id())) && title.contains('@'), "{title}");
        let err = router.local(Options { remote_name: Some("a/b".into()), ..Options::default() }).unwrap_err();
        assert!(err.to_string().contains("may not contain '/'"), "{err}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_prefix_wraps_the_child() {
    run(|| {
        let router = Router::new(None).unwrap();
        let prefix = vec!["env".into(), "MITOGEN_TEST_VAR=wrapped".into()];
        let child = router.local(Options { command_prefix: prefix, ..Options::default() }).unwrap();
        assert_eq!(child.call(env_var, ("MITOGEN_TEST_VAR".to_string(),)).unwrap().as_deref(), Some("wrapped"));
        router.shutdown_and_join();
    });
}

#[test]
fn a_child_that_dies_before_the_handshake_is_a_stream_error_with_its_output() {
    run(|| {
        let router = Router::new(None).unwrap();
        let prefix = vec!["sh".into(), "-c".into(), "echo 'bootstrap went wrong' >&2; exit 3".into(), "--".into()];
        let err = router.local(Options { command_prefix: prefix, ..Options::default() }).unwrap_err();
        let text = err.to_string();
        assert!(err.is_stream(), "{text}");
        assert!(text.contains("exited with status 3") && text.contains("bootstrap went wrong"), "{text}");
        let Some(StreamErrorKind::Eof { last_lines }) = err.stream_kind_of() else { panic!("not Eof: {err:?}") };
        assert_eq!(last_lines, &["bootstrap went wrong".to_string()]);
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_that_cannot_be_started_is_a_child_start_error_with_errno_argv_and_source() {
    run(|| {
        let router = Router::new(None).unwrap();
        let prefix = vec!["/nonexistent/tool".into(), "it's".into()];
        let err = router.local(Options { command_prefix: prefix, ..Options::default() }).unwrap_err();
        let Some(StreamErrorKind::ChildStart { errno, argv }) = err.stream_kind_of() else {
            panic!("not ChildStart: {err:?}")
        };
        assert_eq!(*errno, libc::ENOENT);
        assert!(argv.starts_with(r"/nonexistent/tool 'it'\''s' "), "shell-quoted: {argv}");
        let source = std::error::Error::source(&err).expect("the io::Error is kept as the source");
        assert_eq!(source.downcast_ref::<std::io::Error>().unwrap().raw_os_error(), Some(libc::ENOENT));
        router.shutdown_and_join();
    });
}

#[test]
fn no_handshake_within_connect_timeout_is_a_timeout_error_and_the_child_is_reaped_with_its_own_children() {
    run(|| {
        let router = Router::new(None).unwrap();
        // sh waits for a sleep of its own: killing sh alone would leave the sleep behind.
        let sleep = format!("60.{}", std::process::id());
        let prefix = vec!["sh".into(), "-c".into(), format!("sleep {sleep}").into(), "--".into()];
        let opts =
            Options { command_prefix: prefix, connect_timeout: Duration::from_millis(300), ..Options::default() };
        let err = router.local(opts).unwrap_err();
        assert!(err.is_timeout() && err.to_string().contains("no handshake"), "{err}");
        mitogen_tests::wait_until("the command's own child to go", Duration::from_secs(5), || {
            mitogen_tests::processes_running(&["sleep", &sleep]).is_empty()
        });
        router.shutdown_and_join();
    });
}

#[test]
fn a_broker_shutdown_during_connect_cancels_it_at_once() {
    // A connect in progress must not wait for the broker's grace period (30 s here, so a bound
    // well under it holds on a loaded machine).
    run(|| {
        let broker = mitogen::core::Broker::with_options(mitogen::core::BrokerOptions {
            shutdown_timeout: mitogen_tests::WAIT,
            ..Default::default()
        })
        .unwrap();
        let router = Router::new(Some(&broker)).unwrap();
        let prefix = vec!["sh".into(), "-c".into(), "sleep 60".into(), "--".into()];
        let r = router.clone();
        let connecting = std::thread::spawn(move || r.local(Options { command_prefix: prefix, ..Options::default() }));
        mitogen_tests::wait_until("the child to be spawned", mitogen_tests::WAIT, || {
            !mitogen_tests::Snapshot::take().children().is_empty()
        });
        let t0 = std::time::Instant::now();
        router.shutdown_and_join();
        let err = connecting.join().unwrap().unwrap_err();
        assert_eq!(err.stream_kind_of(), Some(&StreamErrorKind::Cancelled), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10), "cancelled in {:?}", t0.elapsed());
    });
}

#[test]
fn behind_a_command_prefix_the_process_title_is_still_the_remote_name() {
    run(|| {
        let router = Router::new(None).unwrap();
        let prefix = vec!["env".into(), "MITOGEN_TEST_VAR=wrapped".into()];
        let options = Options { command_prefix: prefix, remote_name: Some("wrapped".into()), ..Options::default() };
        let child = router.local(options).unwrap();
        assert_eq!(child.call(process_title, ()).unwrap(), "mitogen:wrapped");
        router.shutdown_and_join();
    });
}

#[test]
fn main_with_and_with_router_run_a_function_with_a_router_they_shut_down() {
    // Issue 21: mitogen::main_with and utils::with_router were untested.
    run(|| {
        let options = mitogen::MainOptions { log_level: None, profiling: false };
        let pid = mitogen::main_with(options, |router| {
            Ok(router.local(Options::default())?.call(crate::local_whoami, ())?.1)
        })
        .unwrap();
        assert_ne!(pid, std::process::id());
        let twice = mitogen::utils::with_router(|router, n: u32| {
            let child = router.local(Options::default())?;
            Ok(child.call(crate::local_whoami, ())?.0 + n)
        });
        assert_eq!(twice(10).unwrap(), 11, "a fresh router each call: context 1 again");
        assert_eq!(twice(20).unwrap(), 21);
    });
}
