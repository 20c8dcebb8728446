//! One body over the connection methods that need nothing but this machine (ripgrep's
//! `rgtest!` habit): `local`, `fork`, and the generic command method through `sh`. The methods
//! over real tools (ssh, sudo, su, doas, the container engines) have their own files.

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
    let options = Options { via: Some(via.clone()), name: Some(label.into()), ..Options::default() };
    let ctx = router.connect(method, &options).unwrap();
    assert_eq!(ctx.name().map(String::from), Some(format!("via.{label}")));
    let (id, _, parents) = ctx.call(crate::local_whoami, ()).unwrap();
    assert_eq!((id, parents), (ctx.context_id(), vec![via.context_id(), 0]));
});

/// What `ps` shows for process `pid`: the first word of its command line.
fn shown_in_ps(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap()).into_owned()
}

// Issue 21: `remote_name` showed in `ps` only for `local()` without a prefix; forked and
// bootstrapped children showed their parent's command line or `.../<sha256> --mitogen-child`.
method_test!(shows_its_remote_name_in_ps, |router, method, label| {
    let named = Options { remote_name: Some(format!("{label}-titled")), ..Options::default() };
    let ctx = router.connect(method, &named).unwrap();
    let pid = ctx.call(crate::local_whoami, ()).unwrap().1;
    assert_eq!(shown_in_ps(pid), format!("mitogen:{label}-titled"));
    // Mitogen's default: mitogen:<user>@<host>:<pid of the parent>.
    let ctx = router.connect(method, &Options::default()).unwrap();
    let pid = ctx.call(crate::local_whoami, ()).unwrap().1;
    assert_eq!(shown_in_ps(pid), format!("mitogen:{}", mitogen::parent::default_remote_name()));
});

fn env_of(name: String) -> Option<String> {
    std::env::var(name).ok()
}

fn exe_path() -> String {
    std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default()
}

mitogen::remote!(env_of, exe_path);

// Issue 21: `command_prefix` and `executable` were honoured by `local()` only; every other
// method dropped them silently.
method_test!(runs_under_the_command_prefix_and_from_the_executable_given, |router, method, label| {
    let prefixed = Options { command_prefix: vec!["env".into(), "MITOGEN_PREFIXED=yes".into()], ..Options::default() };
    let this = std::env::current_exe().unwrap();
    let given = Options { executable: Some(this.clone()), ..Options::default() };
    if label == "fork" {
        for options in [prefixed, given] {
            let e = router.connect(method, &options).unwrap_err();
            assert!(e.to_string().contains("no meaning for a fork"), "{e}");
        }
        return;
    }
    let ctx = router.connect(method, &prefixed).unwrap();
    assert_eq!(ctx.call(env_of, ("MITOGEN_PREFIXED".to_owned(),)).unwrap().as_deref(), Some("yes"));
    let shipped_before = mitogen::parent::bootstrap_stats().shipped;
    let ctx = router.connect(method, &given).unwrap();
    assert_eq!(ctx.call(exe_path, ()).unwrap(), this.display().to_string(), "runs the file given");
    assert_eq!(mitogen::parent::bootstrap_stats().shipped, shipped_before, "ships nothing");
});
