//! The end-to-end suite: one binary, a module per area (see `lib.rs` for the harness).

#[path = "suite/fixtures.rs"]
mod fixtures;

/// `(context id, pid, parent ids)` of the context it runs in; shared by the process tests.
pub(crate) fn local_whoami() -> (u32, u32, Vec<u32>) {
    (mitogen::context_id(), std::process::id(), mitogen::parent_ids())
}
mitogen::remote!(local_whoami);

/// Now, in whole seconds since the epoch (what profile file names carry).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The profile files process `pid` wrote in `dir` at or after `since` (unix seconds, read from
/// their names `mitogen.stats.<pid>.<thread>.<time>.folded`), by thread: a file another process
/// with the same pid left there earlier is not one of them.
pub(crate) fn profiles_of(
    dir: &std::path::Path,
    pid: u32,
    since: u64,
) -> std::collections::BTreeMap<String, std::path::PathBuf> {
    let prefix = format!("mitogen.stats.{pid}.");
    let written = |p: &std::path::Path| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let time = name.strip_suffix(".folded").and_then(|n| n.rsplit_once('.')).and_then(|(_, t)| t.parse().ok());
        name.starts_with(&prefix) && time.is_some_and(|t: u64| t >= since)
    };
    let files = mitogen::profiler::profile_files(dir).unwrap();
    files.into_iter().filter(|p| written(p)).map(|p| (mitogen::profiler::thread_of(&p).unwrap(), p)).collect()
}

/// `/etc/debian_version` where it runs (`"none"` without one): which root it runs in.
pub(crate) fn debian_version() -> String {
    std::fs::read_to_string("/etc/debian_version").map_or_else(|_| "none".into(), |v| v.trim().to_owned())
}
mitogen::remote!(debian_version);

/// Whether a C library is installed where it runs (any `libc.so*` or musl loader in `/lib`).
pub(crate) fn has_libc() -> bool {
    let dirs = ["/lib", "/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];
    dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("libc.so") || name.starts_with("ld-musl") || name.starts_with("ld-linux")
    })
}
mitogen::remote!(has_libc);

/// Block where it runs until its context dies (at most `ms`): a call left in flight.
pub(crate) fn block(ms: u64) -> u64 {
    let (_keep, never) = std::sync::mpsc::channel::<()>();
    let _ = never.recv_timeout(std::time::Duration::from_millis(ms));
    ms
}
mitogen::remote!(block);

/// Start three calls into `ctx` that would block for a minute, then `kill()` what carries them (a
/// host, a container): every caller must wake with a `ChannelError`, within 20 s.
pub(crate) fn callers_wake_with_an_error_after(ctx: &mitogen::master::Context, kill: impl FnOnce()) {
    let calls: Vec<_> = (0..3).map(|_| ctx.call_async(block, (60_000u64,)).unwrap()).collect();
    let start = std::time::Instant::now();
    kill();
    for call in calls {
        let e = call.get_timeout(mitogen_tests::WAIT).unwrap_err();
        assert!(e.is_channel(), "{e}");
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "woke after {:?}", start.elapsed());
}

#[path = "suite/accounts.rs"]
mod accounts;
#[path = "suite/calls.rs"]
mod calls;
#[path = "suite/command.rs"]
mod command;
#[path = "suite/containers.rs"]
mod containers;
#[path = "suite/fork.rs"]
mod fork;
#[path = "suite/fork_safety.rs"]
mod fork_safety;
#[path = "suite/fuzz.rs"]
mod fuzz;
#[path = "suite/introspection.rs"]
mod introspection;
#[path = "suite/layout.rs"]
mod layout;
#[path = "suite/lifetime.rs"]
mod lifetime;
#[path = "suite/methods.rs"]
mod methods;
#[path = "suite/ssh.rs"]
mod ssh;

#[path = "suite/broker.rs"]
mod broker;
#[path = "suite/latch.rs"]
mod latch;
#[path = "suite/local.rs"]
mod local;
#[path = "suite/receiver.rs"]
mod receiver;
#[path = "suite/router.rs"]
mod router;
#[path = "suite/select.rs"]
mod select;
#[path = "suite/streams.rs"]
mod streams;
#[path = "suite/tree.rs"]
mod tree;
