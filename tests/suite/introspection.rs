//! Seeing inside a tree: `Router::get_stats`, `get_router_info` and the remote `router_info`,
//! and the version each context reports.

use mitogen::core::Blob;
use mitogen::master::{Options, Router};
use mitogen::parent::router_info;
use mitogen_tests::run;

fn sink(b: Blob) -> usize {
    b.0.len()
}
mitogen::remote!(sink);

#[test]
fn get_stats_counts_what_a_scripted_workload_did() {
    run(|| {
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

#[test]
fn any_context_reports_its_streams_routes_and_version() {
    run(|| {
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let b = router
            .local(Options { name: Some("b".into()), via: Some(a.core().clone()), ..Options::default() })
            .unwrap();
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
