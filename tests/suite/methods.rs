//! One body over every connection method available (ripgrep's `rgtest!` habit): `local`,
//! `fork`, and the generic command method through `sh` (later ssh, sudo, ...).

use mitogen::master::{CommandSpec, Method, Options, Router};
use mitogen_tests::{run, TempDir};

/// Every method this suite can run here; the command method gets a cache of its own.
fn methods(tmp: &TempDir) -> Vec<(&'static str, Method)> {
    let cache = format!("XDG_CACHE_HOME={}", tmp.path().display());
    vec![
        ("local", Method::Local),
        ("fork", Method::Fork),
        ("command", Method::Command(CommandSpec { argv: vec!["env".into(), cache.into()], ..Default::default() })),
    ]
}

/// `method_test!(name, |router, method, label| body)`: a test `name::<method>` per method.
macro_rules! method_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            fn body(index: usize) {
                run(move || {
                    let tmp = TempDir::new(stringify!($name));
                    let (label, method) = methods(&tmp).swap_remove(index);
                    let router = Router::new(None).unwrap();
                    let f: fn(&Router, &Method, &str) = $body;
                    f(&router, &method, label);
                    router.shutdown_and_join();
                });
            }

            #[test]
            fn local() {
                body(0)
            }

            #[test]
            fn fork() {
                body(1)
            }

            #[test]
            fn command() {
                body(2)
            }
        }
    };
}

method_test!(answers_calls_and_shuts_down, |router, method, label| {
    let ctx = router.connect(method, &Options { name: Some(label.into()), ..Options::default() }).unwrap();
    assert_eq!(ctx.name(), Some(label));
    let (id, pid, parents) = ctx.call(crate::local_whoami, ()).unwrap();
    assert_eq!((id, parents), (ctx.context_id(), vec![0]));
    assert_ne!(pid, std::process::id());
    ctx.shutdown(true).unwrap();
    assert!(ctx.call(crate::local_whoami, ()).unwrap_err().is_channel());
});

method_test!(works_through_a_via_context, |router, method, label| {
    let via = router.local(Options { name: Some("via".into()), ..Options::default() }).unwrap();
    let options = Options { via: Some(via.core().clone()), name: Some(label.into()), ..Options::default() };
    let ctx = router.connect(method, &options).unwrap();
    assert_eq!(ctx.name().map(String::from), Some(format!("via.{label}")));
    let (id, _, parents) = ctx.call(crate::local_whoami, ()).unwrap();
    assert_eq!((id, parents), (ctx.context_id(), vec![via.context_id(), 0]));
});
