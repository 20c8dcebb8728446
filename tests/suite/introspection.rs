//! Seeing inside a tree: `Router::get_stats`, `get_router_info` and the remote `router_info`,
//! and the version each context reports.

use mitogen::core::Blob;
use mitogen::master::{Options, Router};
use mitogen::parent::router_info;
use mitogen_tests::{run, run_alone};

fn sink(b: Blob) -> usize {
    b.0.len()
}
mitogen::remote!(sink);

#[test]
fn get_stats_counts_what_a_scripted_workload_did() {
    run_alone(|| {
        let router = Router::new(None).unwrap();
        let before = router.get_stats();
        let (a, b) = (router.local(Options::default()).unwrap(), router.local(Options::default()).unwrap());
        for _ in 0..10 {
            a.call(crate::local_whoami, ()).unwrap();
        }
        assert_eq!(b.call(sink, (Blob(vec![7; 1 << 20]),)).unwrap(), 1 << 20);
        let stats = router.get_stats();
        assert_eq!(stats.bootstrap.connections - before.bootstrap.connections, 2);
        let stream = |ctx: &mitogen::master::Context| {
            stats.streams.iter().find(|s| s.remote_id == Some(ctx.context_id())).cloned().expect("its stream")
        };
        let (sa, sb) = (stream(&a), stream(&b));
        assert_eq!(sa.name, a.name().unwrap());
        // The config, then ten calls; ten replies and the handshake came back.
        assert_eq!(sa.stats.messages_out, 11, "{sa:?}");
        assert!(sa.stats.messages_in >= 11, "{sa:?}");
        assert!(sb.stats.bytes_out > 1 << 20 && sa.stats.bytes_out < 1 << 16, "{sa:?} {sb:?}");
        assert!(sb.stats.bytes_in > 0 && sb.stats.messages_in >= 2, "{sb:?}");
        router.shutdown_and_join();
    });
}

/// Contexts `a` and `b`, `b` started through `a`.
fn a_and_b_via_a(router: &Router) -> (mitogen::master::Context, mitogen::master::Context) {
    let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
    let b = router.local(Options { name: Some("b".into()), via: Some(a.clone()), ..Options::default() }).unwrap();
    (a, b)
}

#[test]
fn any_context_reports_its_streams_routes_and_version() {
    run(|| {
        let router = Router::new(None).unwrap();
        let (a, b) = a_and_b_via_a(&router);
        let info = a.call(router_info, ()).unwrap();
        assert_eq!((info.context_id, info.name.as_str(), info.parent_ids.clone()), (a.context_id(), "a", vec![0]));
        assert_eq!(info.version, mitogen::core::VERSION);
        assert_ne!(info.pid, std::process::id());
        // a's streams: to its parent, and to b; b is routed over the latter.
        assert!(info.streams.iter().any(|s| s.remote_id == Some(0)), "{info:?}");
        let to_b = info.streams.iter().find(|s| s.remote_id == Some(b.context_id())).expect("a stream to b");
        assert_eq!(to_b.name, "a.b");
        assert!(info.routes.contains(&(b.context_id(), "a.b".to_owned())), "{info:?}");
        // The master's own view routes b through a.
        let master = router.get_router_info();
        assert_eq!((master.context_id, master.name.as_str()), (0, "master"));
        assert!(master.routes.contains(&(b.context_id(), "a".to_owned())), "{master:?}");
        router.shutdown_and_join();
    });
}

/// Log `marker` at info level where it runs; returns this process's pid.
fn log_marker(marker: String) -> u32 {
    log::info!("{marker}");
    log::debug!("debug {marker}");
    std::process::id()
}
mitogen::remote!(log_marker);

/// The debug log files of `pid` under `dir`.
fn debug_logs(dir: &std::path::Path, pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("mitogen.{pid}.");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect()
}

#[test]
fn enable_debug_gives_every_process_of_the_tree_its_own_debug_log() {
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("debug-logs");
        let router = Router::new(None).unwrap();
        // The test harness has its own logger: the master's records stay there.
        assert_eq!(router.enable_debug().unwrap(), None);
        let env = vec!["env".into(), format!("TMPDIR={}", tmp.path().display()).into()];
        let a = router.local(Options { name: Some("a".into()), command_prefix: env, ..Options::default() }).unwrap();
        let b = router.local(Options { name: Some("b".into()), via: Some(a.clone()), ..Options::default() }).unwrap();
        // A fork of a forks too: its file is its own, under its own pid.
        let f = router.fork(mitogen::master::ForkOptions {
            options: Options { name: Some("f".into()), via: Some(a.clone()), ..Options::default() },
            ..Default::default()
        });
        let f = f.unwrap();
        let mut pids = Vec::new();
        for (ctx, marker) in [(&a, "marker-a"), (&b, "marker-b"), (&f, "marker-f")] {
            let pid = ctx.call(log_marker, (marker.to_owned(),)).unwrap();
            pids.push((pid, marker));
        }
        router.shutdown_and_join();
        for (pid, marker) in pids {
            let files = debug_logs(tmp.path(), pid);
            assert_eq!(files.len(), 1, "one debug log for pid {pid}: {files:?}");
            let text = std::fs::read_to_string(&files[0]).unwrap();
            assert!(text.contains(" I tests::introspection: "), "the line format: {text}");
            assert!(text.contains(&format!(": {marker}\n")), "{marker} in {text}");
            assert!(text.contains(&format!(": debug {marker}\n")), "debug level reaches the file: {text}");
            for (other, other_marker) in [("a", "marker-a"), ("b", "marker-b"), ("f", "marker-f")] {
                if other_marker != marker {
                    assert!(!text.contains(&format!(": {other_marker}\n")), "{other}'s record in {marker}'s file");
                }
            }
        }
        // a logged its own work: starting b.
        let a_log = std::fs::read_to_string(&debug_logs(tmp.path(), pids_of(&tmp, "marker-a"))[0]).unwrap();
        assert!(a_log.contains("a.b: connected"), "{a_log}");
    });
}

/// The pid whose debug log holds `marker`.
fn pids_of(tmp: &mitogen_tests::TempDir, marker: &str) -> u32 {
    std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&format!(": {marker}\n"))))
        .and_then(|e| e.file_name().to_string_lossy().split('.').nth(1).and_then(|p| p.parse().ok()))
        .expect("a file with the marker")
}

#[test]
fn context_by_id_gives_one_context_with_its_name_wherever_it_is_asked() {
    run(|| {
        let router = Router::new(None).unwrap();
        let (a, b) = a_and_b_via_a(&router);
        // Made here, and announced from a with ADD_ROUTE.
        assert_eq!(router.context_by_id(a.context_id()).name(), Some("a"));
        assert_eq!(router.context_by_id(b.context_id()).name(), Some("a.b"));
        assert_eq!(&router.context_by_id(b.context_id()), b.core());
        assert_eq!(router.context_by_id(4242).name(), None);
        router.context_by_id_named(4242, Some("named later"));
        assert_eq!(router.context_by_id(4242).name(), Some("named later"));
        router.shutdown_and_join();
    });
}

/// Log `n` records at `level` where it runs.
fn log_many(n: usize, debug: bool) {
    for i in 0..n {
        if debug {
            log::debug!("record {i}");
        } else {
            log::info!("record {i}");
        }
    }
}
mitogen::remote!(log_many);

#[test]
fn a_child_filters_log_records_at_the_source_with_its_masters_level() {
    run_alone(|| {
        let router = Router::new(None).unwrap();
        // The master logs at info (the harness's level): its children send no debug records.
        assert!(log::max_level() < log::LevelFilter::Debug);
        let child = router.local(Options::default()).unwrap();
        let received = || {
            let stats = router.get_stats();
            stats.streams.iter().find(|s| s.remote_id == Some(child.context_id())).unwrap().stats.messages_in
        };
        let start = received();
        child.call(log_many, (500usize, true)).unwrap();
        let after_debug = received();
        assert_eq!(after_debug - start, 1, "only the call's reply crossed");
        child.call(log_many, (500usize, false)).unwrap();
        assert_eq!(received() - after_debug, 501, "500 info records and the reply");
        router.shutdown_and_join();
    });
}

#[test]
fn each_context_filters_at_the_source_with_its_masters_level_for_its_target() {
    run_alone(|| {
        // The master takes debug records, except from `quiet` and the contexts under it (they
        // are logged under `mitogen::ctx::quiet` and `mitogen::ctx::quiet.<name>`).
        log::set_max_level(log::LevelFilter::Debug);
        mitogen_tests::set_target_level("mitogen::ctx::quiet", log::LevelFilter::Info);
        let router = Router::new(None).unwrap();
        let named = |name: &str, via: Option<&mitogen::master::Context>| Options {
            name: Some(name.into()),
            via: via.cloned(),
            ..Options::default()
        };
        let quiet = router.local(named("quiet", None)).unwrap();
        let below_quiet = router.local(named("below", Some(&quiet))).unwrap();
        let loud = router.local(named("loud", None)).unwrap();
        let below_loud = router.local(named("below", Some(&loud))).unwrap();
        // Messages the master received on the stream to `first_hop` while `context` logged 300
        // debug records and answered.
        let sent = |first_hop: &mitogen::core::Context, context: &mitogen::parent::Context| {
            let received = || {
                let stats = router.get_stats();
                stats.streams.iter().find(|s| s.remote_id == Some(first_hop.context_id())).unwrap().stats.messages_in
            };
            let start = received();
            context.call(log_many, (300usize, true)).unwrap();
            received() - start
        };
        assert_eq!(sent(quiet.core(), &quiet), 1, "only the reply");
        assert_eq!(sent(quiet.core(), &below_quiet), 1, "its child took the level from its table");
        // The loud side's streams also carry their own debug records (a stream closing, say).
        assert!(sent(loud.core(), &loud) > 300, "300 debug records and the reply");
        assert!(sent(loud.core(), &below_loud) > 300);
        let kept = |name: &str| {
            let records = mitogen_tests::logged(&format!("mitogen::ctx::{name}"));
            let ours = |(level, target, m): &(log::Level, String, String)| {
                *level == log::Level::Debug && target.ends_with(&format!("::{name}")) && m.contains(": record ")
            };
            records.iter().filter(|r| ours(r)).count()
        };
        assert_eq!((kept("quiet"), kept("quiet.below"), kept("loud"), kept("loud.below")), (0, 0, 300, 300));
        router.shutdown_and_join();
    });
}

#[test]
fn records_a_child_logs_while_it_starts_reach_the_master() {
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("early-records");
        // This master takes debug records (the harness keeps children's at every level).
        log::set_max_level(log::LevelFilter::Debug);
        let router = Router::new(None).unwrap();
        let env = vec!["env".into(), format!("TMPDIR={}", tmp.path().display()).into()];
        let options = Options { name: Some("early".into()), debug: true, command_prefix: env, ..Options::default() };
        let child = router.local(options).unwrap();
        // Logged before the child's context existed; sent ahead of its handshake.
        let pid = child.call(crate::local_whoami, ()).unwrap().1;
        let logs = mitogen_tests::logged("mitogen::ctx::early");
        assert!(logs.iter().any(|(_, _, m)| m.contains(&format!("early: starting in pid {pid}"))), "{logs:?}");
        router.shutdown_and_join();
    });
}

/// Keep a CPU busy where it runs, in a frame a profile can name, until the profiler has
/// sampled it `n` times; its pid.
#[inline(never)]
fn burn_cpu(n: u64) -> u32 {
    std::hint::black_box(mitogen_tests::burn_until_sampled(n));
    std::process::id()
}
mitogen::remote!(burn_cpu);

#[test]
fn every_process_of_a_profiled_tree_writes_a_profile_of_each_thread_that_merges() {
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("profiles");
        let since = crate::unix_now();
        let router = Router::new(None).unwrap();
        router.enable_profiling().unwrap();
        assert!(router.profiling());
        // Children write into `tmp` (their TMPDIR); this process into its own temporary directory.
        let env = vec!["env".into(), format!("TMPDIR={}", tmp.path().display()).into()];
        let a = router.local(Options { name: Some("a".into()), command_prefix: env, ..Options::default() }).unwrap();
        let b = router.local(Options { name: Some("b".into()), via: Some(a.clone()), ..Options::default() }).unwrap();
        // A fork of a profiled context profiles itself under its own pid.
        let f = router
            .fork(mitogen::master::ForkOptions {
                options: Options { name: Some("f".into()), via: Some(b.clone()), ..Options::default() },
                ..Default::default()
            })
            .unwrap();
        let mut pids = Vec::new();
        for ctx in [&a, &b, &f] {
            pids.push(ctx.call(burn_cpu, (8u64,)).unwrap());
        }
        burn_cpu(8);
        // A graceful shutdown: every process writes its profile on the way out, and is reaped.
        router.shutdown_and_join();
        let master = crate::profiles_of(&mitogen::core::sys::temp_dir(), std::process::id(), since);
        let master_files: Vec<_> = master.values().cloned().collect();
        for path in &master_files {
            let moved = tmp.path().join(path.file_name().unwrap());
            std::fs::copy(path, &moved).unwrap();
            std::fs::remove_file(path).unwrap();
        }
        assert!(master.contains_key("test-body"), "the thread that burnt CPU here: {master:?}");
        for pid in pids {
            let files = crate::profiles_of(tmp.path(), pid, since);
            assert!(files.contains_key("main"), "pid {pid} profiled its main thread: {files:?}");
            let main = mitogen::profiler::read_folded(&files["main"]).unwrap();
            let burnt: u64 = main.iter().filter(|(stack, _)| stack.contains("burn_cpu")).map(|(_, n)| n).sum();
            assert!(burnt >= 3, "pid {pid}: {burnt} samples in burn_cpu of {main:?}");
        }
        let merged = mitogen::profiler::merge(&[tmp.path()]).unwrap();
        let burnt: u64 =
            merged.iter().filter(|(s, _)| s.starts_with("main;") && s.contains("burn_cpu")).map(|(_, n)| n).sum();
        assert!(burnt >= 12, "the children's main threads merged: {burnt} samples");
        assert!(merged.keys().any(|s| s.starts_with("test-body;") && s.contains("burn_cpu")));
    });
}

#[test]
fn mitogen_profiling_in_the_environment_profiles_the_master_and_its_children() {
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("profiling-env");
        let since = crate::unix_now();
        // Read when the master router is made, as Mitogen reads it when `Router` is defined.
        std::env::set_var("MITOGEN_PROFILING", "1");
        let router = Router::new(None);
        std::env::remove_var("MITOGEN_PROFILING");
        let router = router.unwrap();
        assert!(router.profiling());
        let env = vec!["env".into(), format!("TMPDIR={}", tmp.path().display()).into()];
        let child = router.local(Options { command_prefix: env, ..Options::default() }).unwrap();
        let pid = child.call(burn_cpu, (2u64,)).unwrap();
        router.shutdown_and_join();
        for path in crate::profiles_of(&mitogen::core::sys::temp_dir(), std::process::id(), since).values() {
            std::fs::remove_file(path).unwrap();
        }
        let files = crate::profiles_of(tmp.path(), pid, since);
        assert!(files.contains_key("main"), "{files:?}");
        mitogen::profiler::read_folded(&files["main"]).unwrap();
    });
}

/// In a child: a record at trace level, a line on stdout (forwarded from the broker thread),
/// and `n` values through `sender`, then its end.
fn trace_print_and_stream(sender: mitogen::core::Sender, n: u32) -> u32 {
    let name = mitogen::core::ExternalContext::current().unwrap().config().name.clone();
    log::trace!("trace record from {name}");
    println!("printed by {name}");
    for i in 0..n {
        sender.send(&i).unwrap();
    }
    sender.close();
    n
}
mitogen::remote!(trace_print_and_stream);

#[test]
fn at_trace_level_every_kind_of_context_calls_streams_logs_and_shuts_down() {
    // Issue 20: a child's broker logged (mio, at trace) while holding its registration lock,
    // the record was forwarded on the spot and re-entered the broker: the child deadlocked.
    run_alone(|| {
        let tmp = mitogen_tests::TempDir::new("trace");
        log::set_max_level(log::LevelFilter::Trace);
        let router = Router::new(None).unwrap();
        let named = |name: &str, via: Option<&mitogen::master::Context>| Options {
            name: Some(name.into()),
            via: via.cloned(),
            ..Options::default()
        };
        let a = router.local(named("a", None)).unwrap();
        let b = router.local(named("b", Some(&a))).unwrap();
        let cache = format!("XDG_CACHE_HOME={}", tmp.path().display());
        let spec = mitogen::master::CommandSpec { argv: vec!["env".into(), cache.into()], ..Default::default() };
        let c = router.command(spec, named("c", None)).unwrap();
        let d = router.local(named("d", Some(&c))).unwrap();
        for ctx in [&a, &b, &c, &d] {
            let recv = mitogen::core::Receiver::new(&router).unwrap();
            let call = ctx.call_async(trace_print_and_stream, (recv.to_sender(), 100u32)).unwrap();
            for i in 0..100u32 {
                assert_eq!(recv.get_data_timeout::<u32>(mitogen_tests::WAIT).unwrap(), i);
            }
            assert_eq!(call.get_timeout(mitogen_tests::WAIT).unwrap().unpickle::<u32>().unwrap(), 100);
        }
        for ctx in [&b, &d, &a, &c] {
            ctx.shutdown(false).unwrap().get_timeout(mitogen_tests::WAIT).unwrap();
        }
        router.shutdown_and_join();
        for name in ["a", "a.b", "c", "c.d"] {
            let got = mitogen_tests::logged(&format!("mitogen::ctx::{name}"));
            let has = |level: log::Level, text: &str| got.iter().any(|(l, _, m)| *l == level && m.ends_with(text));
            assert!(has(log::Level::Trace, &format!("trace record from {name}")), "{name}: {got:?}");
            assert!(has(log::Level::Info, &format!("stdout: printed by {name}")), "{name}: {got:?}");
        }
    });
}
