//! The generic command method and the bootstrap: the executable ships itself through a command
//! to a target with nothing but a POSIX shell, caches itself per account, and copes with
//! missing tools, read-only or noexec places, corrupt cache entries and concurrent parents.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mitogen::master::{CommandSpec, Options, Router};
use mitogen_tests::{run, TempDir};

fn whoami() -> (u32, u32, String) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
    (mitogen::context_id(), uid, exe)
}

mitogen::remote!(whoami);

fn words(argv: &[&str]) -> Vec<OsString> {
    argv.iter().map(OsString::from).collect()
}

/// `env XDG_CACHE_HOME=<dir>` before the rest: each test has its own cache.
fn with_cache(cache: &Path, rest: &[&str]) -> Vec<OsString> {
    let mut argv = words(&["env", &format!("XDG_CACHE_HOME={}", cache.display())]);
    argv.extend(words(rest));
    argv
}

fn spec(argv: Vec<OsString>) -> CommandSpec {
    CommandSpec { argv, no_cache: false }
}

/// The one cached executable under `cache`.
fn cached_file(cache: &Path) -> PathBuf {
    let dir = cache.join("mitogen");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one cached copy: {files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn a_context_through_sh_runs_from_the_cache_and_the_second_connect_ships_nothing() {
    run(|| {
        let tmp = TempDir::new("command-cache");
        let router = Router::new(None).unwrap();
        let first = router.command(spec(with_cache(tmp.path(), &[])), Options::default()).unwrap();
        let (id, uid, exe) = first.call(whoami, ()).unwrap();
        assert_eq!((id, uid), (first.context_id(), 0));
        let file = cached_file(tmp.path());
        assert_eq!(exe, file.display().to_string(), "it runs from the cache");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        let second = router.command(spec(with_cache(tmp.path(), &[])), Options::default()).unwrap();
        assert_eq!(second.call(whoami, ()).unwrap().2, exe);
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), meta.ino(), "not shipped again");
        router.shutdown_and_join();
    });
}
