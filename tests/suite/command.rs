//! The generic command method and the bootstrap: the executable ships itself through a command
//! to a target with nothing but a POSIX shell, caches itself per account, and copes with
//! missing tools, read-only or noexec places, corrupt cache entries and concurrent parents.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use mitogen::core::StreamErrorKind;
use mitogen::master::{CommandSpec, Options, Router, SshOptions, SudoOptions};
use mitogen::parent::Transport;
use mitogen_tests::{run, run_alone, TempDir, WAIT};

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
    CommandSpec { argv, ..Default::default() }
}

/// The one cached executable under `cache`.
fn cached_file(cache: &Path) -> PathBuf {
    let dir = cache.join("mitogen");
    // Beside each verified copy sits its stamp, `<sha256>.ok`.
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().map_or(true, |e| e != "ok"))
        .collect();
    assert_eq!(files.len(), 1, "one cached copy: {files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn a_context_through_sh_runs_from_the_cache_and_the_second_connect_ships_nothing() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
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
        // The verified copy's stamp, so later starts need not hash it again.
        let stamp = std::fs::read_to_string(file.with_extension("ok")).unwrap();
        assert!(stamp.starts_with(&format!("{} {} ", meta.ino(), meta.size())), "{stamp}");
        router.shutdown_and_join();
    });
}

fn panics_here() {
    panic!("a remote panic");
}
mitogen::remote!(panics_here);

/// The remote backtrace of a call to `panics_here` in `ctx`.
fn remote_backtrace(ctx: &mitogen::master::Context) -> String {
    match ctx.call(panics_here, ()) {
        Err(mitogen::Error::CallError(e)) => e.traceback,
        other => panic!("a CallError, not {other:?}"),
    }
}

/// The sizes of the DWARF sections (`.debug_*`, not loaded) of the ELF file at `path`.
fn dwarf_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("readelf").arg("-SW").arg(path).output().unwrap();
    assert!(out.status.success(), "readelf {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // [Nr] Name Type Address Off Size ES Flg ...: the flags leave out A (loaded).
            let f: Vec<&str> = l.split(']').nth(1)?.split_whitespace().collect();
            let loaded =
                f.get(6).is_some_and(|flags| flags.contains('A') && !flags.chars().all(|c| c.is_ascii_digit()));
            (f[0].starts_with(".debug") && !loaded).then(|| u64::from_str_radix(f[4], 16).unwrap())
        })
        .sum()
}

#[test]
fn a_target_gets_the_executable_without_its_debug_sections_unless_told_to_ship_them() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 23: the debug sections were most of what a first connect shipped. Alone: the
    // setting is the process's.
    mitogen_tests::run_alone(|| {
        let tmp = TempDir::new("command-debug-info");
        let own = std::env::current_exe().unwrap();
        let own = own.as_path();
        let (whole_size, whole_sha) = mitogen::core::executable_digest(own).unwrap();
        assert!(dwarf_bytes(own) > 0, "the test binary has line tables");
        let router = Router::new(None).unwrap();

        let stripped = tmp.path().join("stripped");
        let ctx = router.command(spec(with_cache(&stripped, &[])), Options::default()).unwrap();
        let file = cached_file(&stripped);
        assert_eq!(ctx.call(whoami, ()).unwrap().2, file.display().to_string());
        let size = std::fs::metadata(&file).unwrap().len();
        assert_eq!(dwarf_bytes(&file), 0, "no DWARF on the target");
        assert!(size < whole_size, "{size} >= {whole_size}");
        let (_, sha) = mitogen::parent::shipped_digest(own).unwrap();
        assert_eq!(file.file_name().unwrap().to_str().unwrap(), sha, "named by the image's sha256");
        let trace = remote_backtrace(&ctx);
        assert!(trace.contains("panics_here"), "the symbol table names the function: {trace}");
        assert!(!trace.contains("command.rs:"), "no line tables, no file:line: {trace}");

        router.ship_debug_info(true);
        let whole = tmp.path().join("whole");
        let full = router.command(spec(with_cache(&whole, &[])), Options::default());
        router.ship_debug_info(false);
        let full = full.unwrap();
        let file = cached_file(&whole);
        assert_eq!(file.file_name().unwrap().to_str().unwrap(), whole_sha, "the whole file");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), whole_size);
        let trace = remote_backtrace(&full);
        assert!(trace.contains("panics_here") && trace.contains("command.rs:"), "file:line: {trace}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_on_this_machine_ships_uncompressed_and_one_that_may_cross_a_network_gzipped() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 23: gzip on the target took half of a cold connect through a local pipe. Alone:
    // the byte counter is the process's.
    mitogen_tests::run_alone(|| {
        let tmp = TempDir::new("command-uncompressed");
        let (size, sha) = mitogen::parent::shipped_digest(Path::new("/proc/self/exe")).unwrap();
        let router = Router::new(None).unwrap();
        for uncompressed in [true, false] {
            let cache = tmp.path().join(format!("uncompressed-{uncompressed}"));
            let before = mitogen::parent::bootstrap_stats().bytes_sent;
            let spec = CommandSpec { uncompressed, ..spec(with_cache(&cache, &[])) };
            let ctx = router.command(spec, Options::default()).unwrap();
            assert_eq!(ctx.call(whoami, ()).unwrap().2, cached_file(&cache).display().to_string());
            assert_eq!(cached_file(&cache).file_name().unwrap().to_str().unwrap(), sha);
            let sent = mitogen::parent::bootstrap_stats().bytes_sent - before;
            if uncompressed {
                assert_eq!(sent, size, "the image as it is");
            } else {
                assert!(sent < size * 3 / 4, "gzip: {sent} of {size}");
            }
            ctx.shutdown(true).unwrap();
        }
        router.shutdown_and_join();
    });
}

/// A directory of `name -> target` symlinks, to build a PATH holding exactly some tools.
fn tool_dir(tmp: &Path, name: &str, tools: &[(&str, &str)]) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    for (tool, target) in tools {
        std::os::unix::fs::symlink(target, dir.join(tool)).unwrap();
    }
    dir
}

/// Connect through `argv`, call, check the context runs from `cache`'s copy, and shut it down.
fn connects_and_answers(router: &Router, cache: &Path, argv: Vec<OsString>) {
    let ctx = router.command(spec(argv), Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let (id, _, exe) = ctx.call(whoami, ()).unwrap();
    assert_eq!(id, ctx.context_id());
    assert_eq!(exe, cached_file(cache).display().to_string());
    ctx.shutdown(true).unwrap();
}

#[test]
fn stage_one_runs_under_busybox_with_nothing_but_busybox_tools() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-busybox");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let status = std::process::Command::new("busybox").arg("--install").arg("-s").arg(&bin).status().unwrap();
        assert!(status.success());
        let cache = tmp.path().join("cache");
        let router = Router::new(None).unwrap();
        let path = format!("PATH={}", bin.display());
        connects_and_answers(&router, &cache, with_cache(&cache, &[&path]));
        router.shutdown_and_join();
    });
}

#[test]
fn stage_one_runs_under_bash_and_dash() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-shells");
        let router = Router::new(None).unwrap();
        for shell in ["/bin/bash", "/usr/bin/dash"] {
            let name = Path::new(shell).file_name().unwrap().to_str().unwrap();
            let bin = tool_dir(tmp.path(), name, &[("sh", shell)]);
            let cache = tmp.path().join(format!("cache-{name}"));
            let path = format!("PATH={}:/usr/bin:/bin", bin.display());
            connects_and_answers(&router, &cache, with_cache(&cache, &[&path]));
        }
        router.shutdown_and_join();
    });
}

#[test]
fn without_gzip_the_executable_ships_uncompressed() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-nogzip");
        let tools: Vec<(&str, String)> = ["sh", "id", "uname", "ls", "mkdir", "chmod", "rm", "mv", "ln", "head", "cat"]
            .iter()
            .map(|t| (*t, format!("/usr/bin/{t}")))
            .collect();
        let tools: Vec<(&str, &str)> = tools.iter().map(|(t, p)| (*t, p.as_str())).collect();
        let bin = tool_dir(tmp.path(), "bin", &tools);
        assert!(!bin.join("gzip").exists());
        let cache = tmp.path().join("cache");
        let router = Router::new(None).unwrap();
        let path = format!("PATH={}", bin.display());
        connects_and_answers(&router, &cache, with_cache(&cache, &[&path]));
        router.shutdown_and_join();
    });
}

/// Run the rest in a private mount namespace where `noexec` (a list of directories) are
/// `noexec` tmpfs mounts and `/dev/shm` is remounted `noexec`.
fn in_noexec_namespace(noexec: &[&Path], env: &[String]) -> Vec<OsString> {
    let mounts: String = noexec.iter().map(|d| format!("mount -t tmpfs -o noexec tmpfs {} && ", d.display())).collect();
    let script = format!("{mounts}mount -o remount,noexec /dev/shm && exec \"$@\"");
    let mut argv = words(&["env"]);
    argv.extend(env.iter().map(OsString::from));
    argv.extend(words(&["unshare", "-m", "--propagation", "private", "sh", "-c", &script, "noexec"]));
    argv
}

/// `err` is stage 1's "nowhere to execute from", naming each of `names`.
fn nowhere_to_execute_from(err: &mitogen::Error, names: &[String]) {
    let text = err.to_string();
    assert!(err.is_stream() && text.contains("nowhere to execute from"), "{text}");
    for name in names {
        assert!(text.contains(name), "{name:?} named in: {text}");
    }
}

/// `<tmp>/xdg` and `<tmp>/tmp`, made, and the environment naming them `XDG_CACHE_HOME` and
/// `TMPDIR`.
fn cache_and_tmpdir(tmp: &TempDir) -> (PathBuf, PathBuf, Vec<String>) {
    let (xdg, tmpdir) = (tmp.path().join("xdg"), tmp.path().join("tmp"));
    std::fs::create_dir(&xdg).unwrap();
    std::fs::create_dir(&tmpdir).unwrap();
    let env = vec![format!("XDG_CACHE_HOME={}", xdg.display()), format!("TMPDIR={}", tmpdir.display())];
    (xdg, tmpdir, env)
}

#[test]
fn a_noexec_cache_and_shm_fall_back_to_tmpdir_and_with_none_left_the_error_names_them() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-noexec");
        let (xdg, tmpdir, env) = cache_and_tmpdir(&tmp);
        let router = Router::new(None).unwrap();
        let ctx = router.command(spec(in_noexec_namespace(&[&xdg], &env)), Options::default()).unwrap();
        let exe = ctx.call(whoami, ()).unwrap().2;
        assert!(exe.starts_with(&format!("{}/mitogen-0/", tmpdir.display())), "{exe}");
        // Every place noexec: the error says which were tried.
        let err = router.command(spec(in_noexec_namespace(&[&xdg, &tmpdir], &env)), Options::default()).unwrap_err();
        nowhere_to_execute_from(
            &err,
            &[
                format!("{}/mitogen", xdg.display()),
                "/dev/shm/mitogen-0".into(),
                format!("{}/mitogen-0", tmpdir.display()),
            ],
        );
        router.shutdown_and_join();
    });
}

#[test]
fn a_read_only_home_falls_back_to_tmpdir() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-rohome");
        let (home, tmpdir) = (tmp.path().join("home"), tmp.path().join("tmp"));
        std::fs::create_dir(&home).unwrap();
        std::fs::create_dir(&tmpdir).unwrap();
        let script = format!(
            "mount --bind {h} {h} && mount -o remount,bind,ro {h} && mount -o remount,noexec /dev/shm && exec \"$@\"",
            h = home.display()
        );
        let mut argv = words(&["env", "-u", "XDG_CACHE_HOME"]);
        argv.push(format!("HOME={}", home.display()).into());
        argv.push(format!("TMPDIR={}", tmpdir.display()).into());
        argv.extend(words(&["unshare", "-m", "--propagation", "private", "sh", "-c", &script, "rohome"]));
        let router = Router::new(None).unwrap();
        let ctx = router.command(spec(argv), Options::default()).unwrap();
        let exe = ctx.call(whoami, ()).unwrap().2;
        assert!(exe.starts_with(&format!("{}/mitogen-0/", tmpdir.display())), "{exe}");
        assert!(!home.join(".cache").exists(), "nothing was written to the read-only home");
        router.shutdown_and_join();
    });
}

#[test]
fn a_missing_home_is_the_accounts_own_and_one_that_does_not_exist_falls_back() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-nohome");
        let tmpdir = tmp.path().join("tmp");
        std::fs::create_dir(&tmpdir).unwrap();
        std::fs::set_permissions(&tmpdir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let router = Router::new(None).unwrap();
        // No HOME (`env -i`, `lxc-attach --clear-env`): the home of the account's passwd entry.
        let as_user = |user: &str, group: &str| {
            let mut argv =
                words(&["setpriv", &format!("--reuid={user}"), &format!("--regid={group}"), "--init-groups"]);
            argv.extend(words(&["env", "-u", "HOME", "-u", "XDG_CACHE_HOME", &format!("TMPDIR={}", tmpdir.display())]));
            argv
        };
        let ctx = router.command(spec(as_user("mitogen-user", "mitogen-user")), Options::default()).unwrap();
        let exe = ctx.call(whoami, ()).unwrap().2;
        assert!(exe.starts_with("/home/mitogen-user/.cache/mitogen/"), "{exe}");
        // nobody's home (/nonexistent) cannot be made: /dev/shm (private) is the next place.
        let ctx = router.command(spec(as_user("nobody", "nogroup")), Options::default()).unwrap();
        let exe = ctx.call(whoami, ()).unwrap().2;
        assert!(exe.starts_with("/dev/shm/mitogen-65534/") || exe.starts_with(&tmpdir.display().to_string()), "{exe}");
        ctx.shutdown(true).unwrap();
        let _ = std::fs::remove_file(&exe);
        let _ = std::fs::remove_file(format!("{exe}.ok"));
        router.shutdown_and_join();
    });
}

#[test]
fn a_corrupt_or_truncated_cache_entry_is_replaced() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-corrupt");
        let router = Router::new(None).unwrap();
        let argv = || with_cache(tmp.path(), &[]);
        router.command(spec(argv()), Options::default()).unwrap().shutdown(true).unwrap();
        let file = cached_file(tmp.path());
        let good = std::fs::read(&file).unwrap();
        // Same size, not an executable: it fails to start, and a fresh copy replaces it.
        std::fs::write(&file, vec![b'#'; good.len()]).unwrap();
        connects_and_answers(&router, tmp.path(), argv());
        assert!(std::fs::read(&file).unwrap() == good, "the fresh copy is the executable");
        // Truncated: stage 1 sees the wrong size and asks for a copy.
        std::fs::write(&file, &good[..good.len() / 2]).unwrap();
        connects_and_answers(&router, tmp.path(), argv());
        assert!(std::fs::read(&file).unwrap() == good);
        router.shutdown_and_join();
    });
}

#[test]
fn a_cache_entry_that_runs_but_is_not_the_one_shipped_is_removed_and_the_next_connect_ships_again() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-sha");
        let router = Router::new(None).unwrap();
        let argv = || with_cache(tmp.path(), &[]);
        router.command(spec(argv()), Options::default()).unwrap().shutdown(true).unwrap();
        let file = cached_file(tmp.path());
        let mut bytes = std::fs::read(&file).unwrap();
        // The last byte sits in the section headers, which the loader does not use: the copy
        // still runs, but its sha256 is not the one shipped.
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        is_caught_removed_and_shipped_again(&router, tmp.path(), &file, argv);
        router.shutdown_and_join();
    });
}

/// The cached `file` under `cache` is not the one shipped: the next connect through `argv()`
/// fails with `CorruptExecutable`, the child removes it, and the one after ships a fresh copy.
fn is_caught_removed_and_shipped_again(router: &Router, cache: &Path, file: &Path, argv: impl Fn() -> Vec<OsString>) {
    let err = router.command(spec(argv()), Options::default()).unwrap_err();
    assert!(matches!(err.stream_kind_of(), Some(StreamErrorKind::CorruptExecutable { .. })), "{err}");
    assert!(!file.exists(), "the child removed the copy that is not the one shipped");
    connects_and_answers(router, cache, argv());
}

#[test]
fn two_parents_bootstrapping_the_same_account_at_once_both_succeed() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-race");
        let cache = tmp.path().to_owned();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let router = Router::new(None).unwrap();
                    let ctx = router.command(spec(with_cache(&cache, &[])), Options::default());
                    let answer = ctx.and_then(|c| c.call(whoami, ()));
                    router.shutdown_and_join();
                    answer
                })
            })
            .collect();
        let answers: Vec<_> = racers.into_iter().map(|r| r.join().unwrap().unwrap()).collect();
        for (_, _, exe) in answers {
            assert_eq!(exe, cached_file(&cache).display().to_string(), "both run the one good copy");
        }
    });
}

#[test]
fn no_cache_leaves_nothing_on_the_targets_disk() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-nocache");
        let router = Router::new(None).unwrap();
        let ctx = router
            .command(
                CommandSpec { argv: with_cache(tmp.path(), &[]), no_cache: true, ..Default::default() },
                Options::default(),
            )
            .unwrap();
        let exe = ctx.call(whoami, ()).unwrap().2;
        assert!(exe.ends_with("(deleted)"), "it runs from a deleted file: {exe}");
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("mitogen")).unwrap().collect();
        assert!(left.is_empty(), "nothing left: {left:?}");
        router.shutdown_and_join();
    });
}

#[test]
fn another_account_gets_its_own_private_cache() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let argv = words(&[
            "setpriv",
            "--reuid=mitogen-user",
            "--regid=mitogen-user",
            "--init-groups",
            "--",
            "env",
            "-u",
            "XDG_CACHE_HOME",
            "HOME=/home/mitogen-user",
        ]);
        let ctx = router.command(spec(argv), Options::default()).unwrap();
        let (_, uid, exe) = ctx.call(whoami, ()).unwrap();
        assert_ne!(uid, 0);
        assert!(exe.starts_with("/home/mitogen-user/.cache/mitogen/"), "{exe}");
        let dir = std::fs::metadata("/home/mitogen-user/.cache/mitogen").unwrap();
        assert_eq!((dir.uid(), dir.mode() & 0o777), (uid, 0o700), "private to the account");
        ctx.shutdown(true).unwrap();
        // Shipped again by the next run, whatever the build: nothing of the test stays behind.
        std::fs::remove_file(&exe).unwrap();
        let _ = std::fs::remove_file(format!("{exe}.ok"));
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_that_fails_is_a_clear_error_and_is_reaped() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let err = router.command(spec(words(&["/nonexistent/tool"])), Options::default()).unwrap_err();
        assert!(
            matches!(err.stream_kind_of(), Some(StreamErrorKind::ChildStart { errno, .. }) if *errno == libc::ENOENT),
            "{err}"
        );
        let err = router
            .command(spec(words(&["sh", "-c", "echo no shell here >&2; exit 7", "x"])), Options::default())
            .unwrap_err();
        let Some(StreamErrorKind::Eof { last_lines }) = err.stream_kind_of() else { panic!("not Eof: {err}") };
        assert!(
            last_lines.iter().any(|l| l == "no shell here") && err.to_string().contains("exited with status 7"),
            "{err}"
        );
        let silent = Options { connect_timeout: Duration::from_millis(300), ..Options::default() };
        let err = router.command(spec(words(&["sh", "-c", "sleep 60", "x"])), silent).unwrap_err();
        assert!(err.is_timeout(), "{err}");
        router.shutdown_and_join();
    });
}

#[test]
fn the_command_method_works_through_via() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("command-via");
        let router = Router::new(None).unwrap();
        let a = router.local(Options { name: Some("a".into()), ..Options::default() }).unwrap();
        let options = Options { via: Some(a.clone()), name: Some("c".into()), ..Options::default() };
        let c = router.command(spec(with_cache(tmp.path(), &[])), options).unwrap();
        assert_eq!(c.name(), Some("a.c"));
        assert_eq!(c.call(whoami, ()).unwrap().0, c.context_id());
        router.shutdown_and_join();
    });
}

fn has_controlling_tty() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").is_ok()
}

pub(crate) fn echo_blob(b: mitogen::core::Blob) -> mitogen::core::Blob {
    b
}

mitogen::remote!(has_controlling_tty, echo_blob);

#[test]
fn every_transport_carries_binary_data_and_the_pty_ones_give_a_controlling_terminal() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run_alone(|| {
        let tmp = TempDir::new("command-transports");
        // Without a PTY a child has whatever terminal this test process has (none under CI).
        let ours = has_controlling_tty();
        let router = Router::new(None).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        for (transport, tty) in [
            (Transport::Socketpair, ours),
            (Transport::Pipes, ours),
            (Transport::Merged, ours),
            (Transport::Pty, true),
            (Transport::Hybrid, true),
        ] {
            // A cache of its own per transport: each ships the executable through its wiring.
            let cache = tmp.path().join(format!("{transport:?}"));
            let spec = CommandSpec { argv: with_cache(&cache, &[]), transport, ..Default::default() };
            let ctx = router.command(spec, Options::default()).unwrap_or_else(|e| panic!("{transport:?}: {e}"));
            assert_eq!(ctx.call(has_controlling_tty, ()).unwrap(), tty, "{transport:?}");
            let back = ctx.call(echo_blob, (mitogen::core::Blob(data.clone()),)).unwrap();
            assert!(back.0 == data, "{transport:?}: every byte value crosses unchanged");
            ctx.shutdown(true).unwrap();
        }
        router.shutdown_and_join();
    });
}

/// The account's uid, from `id -u`.
fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no account {user}"))
}

fn chown(path: &Path, user: &str) {
    let uid = uid_of(user);
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// What another account plants to be run as the target: a script of the executable's size
/// (padded with newlines) that writes the uid it runs as to `marker`.
fn planted_script(marker: &Path) -> Vec<u8> {
    let (size, _) = mitogen::parent::shipped_digest(Path::new("/proc/self/exe")).unwrap();
    let mut script = format!("#!/bin/sh\nid -u > {}\n", marker.display()).into_bytes();
    script.resize(size as usize, b'\n');
    script
}

/// A context as `mitogen-user` whose home (and so cache, `<home>/.cache/mitogen`) is `home`.
fn as_mitogen_user(router: &Router, home: &Path) -> Result<mitogen::master::Context, mitogen::Error> {
    let argv = words(&[
        "setpriv",
        "--reuid=mitogen-user",
        "--regid=mitogen-user",
        "--init-groups",
        "--",
        "env",
        "-u",
        "XDG_CACHE_HOME",
        &format!("HOME={}", home.display()),
    ]);
    router.command(spec(argv), Options::default())
}

/// In `tmp`: a home of `mitogen-user`'s with its cache directory (mode 0755 all the way), and
/// a directory anyone may write to; returns them and the sha256 naming this executable's entry.
fn mitogen_user_home(tmp: &TempDir) -> (PathBuf, PathBuf, PathBuf, String) {
    let (home, out) = (tmp.path().join("home"), tmp.path().join("out"));
    let cache = home.join(".cache/mitogen");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir(&out).unwrap();
    chmod(&out, 0o777);
    for dir in [&home, &home.join(".cache"), &cache] {
        chown(dir, "mitogen-user");
        chmod(dir, 0o755);
    }
    let (_, sha) = mitogen::parent::shipped_digest(Path::new("/proc/self/exe")).unwrap();
    (home, cache, out, sha)
}

/// Whether the master logged a warning containing `text`.
fn warned(text: &str) -> bool {
    mitogen_tests::logged("mitogen_parent").iter().any(|(l, _, m)| *l == log::Level::Warn && m.contains(text))
}

/// Forget a copy this test put in a place other tests share.
fn remove_shared_copy(exe: &str) {
    let _ = std::fs::remove_file(exe);
    let _ = std::fs::remove_file(format!("{exe}.ok"));
}

#[test]
fn a_file_planted_in_a_cache_others_can_write_to_is_never_run() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 20: with the account's cache directory world-writable, another account's file of
    // the right name and size ran as the account (as root, for sudo), and the connect succeeded.
    run(|| {
        let tmp = TempDir::new("planted-dir");
        let (home, cache, out, sha) = mitogen_user_home(&tmp);
        chmod(&cache, 0o777);
        let (marker, planted) = (out.join("ran"), cache.join(&sha));
        std::fs::write(&planted, planted_script(&marker)).unwrap();
        chown(&planted, "mitogen-other");
        chmod(&planted, 0o755);

        let router = Router::new(None).unwrap();
        let ctx = as_mitogen_user(&router, &home).unwrap();
        let (_, uid, exe) = ctx.call(whoami, ()).unwrap();
        assert_eq!(uid, uid_of("mitogen-user"));
        assert!(!marker.exists(), "the planted file ran as uid {:?}", std::fs::read_to_string(&marker));
        assert!(exe.starts_with(&format!("/dev/shm/mitogen-{uid}/")), "the next private place: {exe}");
        assert_eq!(std::fs::read(&planted).unwrap(), planted_script(&marker), "left as it was, never run");
        assert!(warned(&format!("refused {}: writable by everyone", cache.display())));
        ctx.shutdown(true).unwrap();
        remove_shared_copy(&exe);
        router.shutdown_and_join();
    });
}

#[test]
fn a_cache_entry_others_can_write_or_own_or_a_symlink_is_replaced_and_never_run() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 20: in a private directory, a cached file that is group- or world-writable (or
    // another account's, or a symlink) ran as the account.
    run(|| {
        let tmp = TempDir::new("planted-file");
        let (home, cache, out, sha) = mitogen_user_home(&tmp);
        let (marker, entry, elsewhere) = (out.join("ran"), cache.join(&sha), out.join("script"));
        let router = Router::new(None).unwrap();
        type Plant = fn(&Path, &Path, &[u8]);
        let plants: [(&str, Plant); 3] = [
            ("lets others than its owner at it", |entry, _, script| {
                // The account's own file, mode 0777: mitogen-other writes its script into it.
                std::fs::write(entry, b"").unwrap();
                chown(entry, "mitogen-user");
                chmod(entry, 0o777);
                let mut w = std::process::Command::new("setpriv")
                    .args(["--reuid=mitogen-other", "--regid=mitogen-other", "--init-groups", "--"])
                    .args(["sh", "-c", "cat > \"$0\""])
                    .arg(entry)
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                std::io::Write::write_all(w.stdin.as_mut().unwrap(), script).unwrap();
                drop(w.stdin.take());
                assert!(w.wait().unwrap().success(), "mitogen-other wrote into the entry");
            }),
            ("owned by uid", |entry, _, script| {
                std::fs::write(entry, script).unwrap();
                chown(entry, "mitogen-other");
                chmod(entry, 0o700);
            }),
            ("a symbolic link", |entry, elsewhere, script| {
                std::fs::write(elsewhere, script).unwrap();
                chown(elsewhere, "mitogen-user");
                chmod(elsewhere, 0o700);
                std::os::unix::fs::symlink(elsewhere, entry).unwrap();
                chown(entry, "mitogen-user");
            }),
        ];
        for (why, plant) in plants {
            let _ = std::fs::remove_file(&entry);
            plant(&entry, &elsewhere, &planted_script(&marker));
            let ctx = as_mitogen_user(&router, &home).unwrap();
            let exe = ctx.call(whoami, ()).unwrap().2;
            assert!(!marker.exists(), "{why}: the planted file ran");
            assert_eq!(exe, entry.display().to_string(), "{why}: a fresh copy in the private place");
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            assert!(meta.is_file(), "{why}: replaced by a regular file");
            assert_eq!((meta.uid(), meta.mode() & 0o777), (uid_of("mitogen-user"), 0o700), "{why}");
            assert!(warned(&format!("refused {}: ", entry.display())) && warned(why), "{why}: warned");
            ctx.shutdown(true).unwrap();
        }
        router.shutdown_and_join();
    });
}

#[test]
fn with_every_place_refused_the_error_names_each_and_what_is_wrong() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = TempDir::new("refused");
        let (xdg, tmpdir, env) = cache_and_tmpdir(&tmp);
        chmod(&xdg, 0o777);
        chmod(&tmpdir, 0o775);
        let router = Router::new(None).unwrap();
        // /dev/shm is noexec there; the two others are writable by others.
        let err = router.command(spec(in_noexec_namespace(&[], &env)), Options::default()).unwrap_err();
        nowhere_to_execute_from(
            &err,
            &[
                format!("refused {}: writable by everyone", xdg.display()),
                format!("refused {}: writable by its group (gid 0)", tmpdir.display()),
            ],
        );
        router.shutdown_and_join();
    });
}

#[test]
fn a_cached_copy_altered_in_place_with_its_times_restored_is_caught() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 20: the stamp beside a verified copy held inode, size and mtime, which anyone who
    // can write the file can restore; the change time (ctime) cannot be set back.
    run(|| {
        let tmp = TempDir::new("command-ctime");
        let router = Router::new(None).unwrap();
        let argv = || with_cache(tmp.path(), &[]);
        let ctx = router.command(spec(argv()), Options::default()).unwrap();
        let pid = ctx.call(crate::local_whoami, ()).unwrap().1;
        ctx.shutdown(true).unwrap();
        // Until it has exited, its file cannot be opened for writing (ETXTBSY).
        mitogen_tests::wait_until("the child to exit", Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
        let file = cached_file(tmp.path());
        assert!(file.with_extension("ok").exists(), "stamped as verified");
        let before = std::fs::metadata(&file).unwrap();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
            // In the section headers, which the loader does not use: the copy still runs.
            f.seek(SeekFrom::End(-1)).unwrap();
            let mut last = [0u8];
            std::io::Read::read_exact(&mut f, &mut last).unwrap();
            f.seek(SeekFrom::End(-1)).unwrap();
            f.write_all(&[last[0] ^ 0xff]).unwrap();
            let times = std::fs::FileTimes::new()
                .set_accessed(before.accessed().unwrap())
                .set_modified(before.modified().unwrap());
            f.set_times(times).unwrap();
        }
        let after = std::fs::metadata(&file).unwrap();
        assert_eq!(
            (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
            (before.ino(), before.size(), before.mtime(), before.mtime_nsec())
        );
        is_caught_removed_and_shipped_again(&router, tmp.path(), &file, argv);
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_that_floods_its_output_times_out_on_time_with_a_bounded_error() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 20: stage 1's reader checked its deadline only when a read would block, which
    // never happens under a flood, and kept a line without newlines in memory whole.
    run(|| {
        let router = Router::new(None).unwrap();
        let timeout = Duration::from_secs(2);
        for (what, script) in
            [("lines", "exec yes flood"), ("no newlines", "exec cat /dev/zero"), ("stderr", "exec cat /dev/zero >&2")]
        {
            let options = Options { connect_timeout: timeout, ..Options::default() };
            let t0 = std::time::Instant::now();
            let err = router.command(spec(words(&["sh", "-c", script])), options).unwrap_err();
            let took = t0.elapsed();
            assert!(err.is_timeout(), "{what}: {err}");
            // The defect this rules out never ended at all: a bound that holds under load.
            assert!(took < timeout + Duration::from_secs(10), "{what}: took {took:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("within {timeout:?}")) && text.len() < 8192, "{what}: {} bytes", text.len());
            if what == "lines" {
                assert!(text.contains("last output: flood"), "{text}");
            }
        }
        router.shutdown_and_join();
    });
}

/// A directory of fake tools ahead of the real ones on `PATH`, making the target report
/// `uname` and `getconf` as another machine would; the argv for the generic method that runs
/// stage 1 there, with its cache under `dir`.
fn fake_target(dir: &Path, uname: Option<&str>, getconf: Option<&str>) -> Vec<OsString> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (tool, says) in [("uname", uname), ("getconf", getconf)] {
        if let Some(says) = says {
            std::fs::write(bin.join(tool), format!("#!/bin/sh\necho {says}\n")).unwrap();
            chmod(&bin.join(tool), 0o755);
        }
    }
    with_cache(&dir.join("cache"), &[&format!("PATH={}:/usr/bin:/bin", bin.display())])
}

#[test]
fn a_target_no_build_fits_gets_a_clear_error_naming_it_and_nothing_is_left_there() {
    // Issue 22: another machine, and an older glibc than this build needs, with nothing
    // registered that fits: a `NoExecutable` error naming the target, what this build needs
    // and the cargo command that builds one that fits, within connect_timeout; stage 1 exits
    // having written nothing.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        // A static build of this suite fits the old glibc: only the other machine is refused.
        let own_static = cfg!(target_env = "musl");
        let needs = if own_static { "needs Linux x86_64, static" } else { "needs Linux x86_64, glibc >= 2." };
        let cases = [
            // (This machine's own getconf answers there.)
            ("arm", Some("Linux aarch64"), None, "Linux aarch64, glibc 2.", "aarch64-unknown-linux-musl"),
            // Issue 32: the triple rustc has for the machine `uname -m` names, not `<uname>-...`.
            ("riscv", Some("Linux riscv64"), None, "Linux riscv64, glibc 2.", "riscv64gc-unknown-linux-musl"),
            ("armv7", Some("Linux armv7l"), None, "Linux armv7l, glibc 2.", "armv7-unknown-linux-musleabihf"),
            ("i386", Some("Linux i386"), None, "Linux i386, glibc 2.", "i586-unknown-linux-musl"),
            ("old", None, Some("glibc 2.17"), "Linux x86_64, glibc 2.17", "x86_64-unknown-linux-musl"),
        ];
        for (what, uname, getconf, target, triple) in cases.into_iter().filter(|c| !own_static || c.0 != "old") {
            let tmp = TempDir::new(&format!("no-fit-{what}"));
            let start = Instant::now();
            let options = Options { connect_timeout: WAIT, ..Options::default() };
            let err = router.command(spec(fake_target(tmp.path(), uname, getconf)), options).unwrap_err();
            // At once: not the connect timeout's 30 s.
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: took {:?}", start.elapsed());
            let named = matches!(err.stream_kind_of(), Some(StreamErrorKind::NoExecutable { target: t }) if t.starts_with(target));
            assert!(named, "{what}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("cargo build --release --target {triple}")), "{what}: {text}");
            assert!(text.contains(needs), "{what}: what this build needs: {text}");
            assert!(!tmp.path().join("cache").exists(), "{what}: nothing was written on the target");
        }
        router.shutdown_and_join();
    });
}

#[test]
fn a_target_that_is_not_linux_is_said_plainly_and_nothing_is_left_there() {
    // Issue 32: a FreeBSD target gets NoExecutable at once, saying contexts run on Linux only
    // and naming its system and machine, with no cargo command that could not work.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let tmp = TempDir::new("not-linux");
        let start = Instant::now();
        let options = Options { connect_timeout: WAIT, ..Options::default() };
        let err = router.command(spec(fake_target(tmp.path(), Some("FreeBSD amd64"), None)), options).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        let named = matches!(err.stream_kind_of(), Some(StreamErrorKind::NoExecutable { target: t }) if t.starts_with("FreeBSD amd64"));
        assert!(named, "{err}");
        let text = err.to_string();
        assert!(text.contains("runs FreeBSD on amd64") && text.contains("Linux only"), "{text}");
        assert!(!text.contains("cargo build"), "nothing that cannot work is suggested: {text}");
        assert!(!tmp.path().join("cache").exists(), "nothing was written on the target");
        router.shutdown_and_join();
    });
}

#[test]
fn a_static_build_registered_is_chosen_where_this_one_does_not_fit_and_only_there() {
    // Issue 22: this suite built for x86_64-unknown-linux-musl (tests/run builds it) is
    // registered; a target with an older glibc gets it, this machine still gets this build.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::StaticBuild) {
        return;
    }
    run(|| {
        let static_build = mitogen_tests::static_build().unwrap();
        let tmp = TempDir::new("static-fits");
        let router = Router::new(None).unwrap();
        router.add_executable(&static_build).unwrap();
        let old = router.command(spec(fake_target(tmp.path(), None, Some("glibc 2.17"))), Options::default()).unwrap();
        let (_, sha) = mitogen::parent::shipped_digest(&static_build).unwrap();
        assert!(old.call(whoami, ()).unwrap().2.ends_with(&sha), "the old glibc target runs the static build");
        let here = router.command(spec(with_cache(&tmp.path().join("here"), &[])), Options::default()).unwrap();
        let (_, own) = mitogen::parent::shipped_digest(Path::new("/proc/self/exe")).unwrap();
        assert!(here.call(whoami, ()).unwrap().2.ends_with(&own), "this machine runs this build");
        router.shutdown_and_join();
    });
}

#[test]
fn another_program_registered_for_a_target_is_refused_when_it_answers() {
    // Issue 22: every candidate must be this program: the quickstart example built static is
    // registered; it starts on the old-glibc target, and its answer names another program.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::StaticBuild) {
        return;
    }
    if cfg!(target_env = "musl") {
        eprintln!(
            "skipped: this suite is a static build, which fits the target itself, so nothing registered is chosen"
        );
        return;
    }
    run_alone(|| {
        let tmp = TempDir::new("wrong-program");
        let router = Router::new(None).unwrap();
        router.add_executable(&mitogen_tests::static_other_program().unwrap()).unwrap();
        let err =
            router.command(spec(fake_target(tmp.path(), None, Some("glibc 2.17"))), Options::default()).unwrap_err();
        assert_eq!(err.stream_kind_of(), Some(&StreamErrorKind::WrongProgram), "{err}");
        assert!(err.to_string().contains("another program"), "{err}");
        router.shutdown_and_join();
    });
}

/// The machine this process was built for.
fn arch() -> String {
    std::env::consts::ARCH.to_owned()
}
mitogen::remote!(arch);

/// Bytes the master has written on its stream to `ctx` (the first link of a `via=` path).
fn bytes_to(router: &Router, ctx: &mitogen::master::Context) -> u64 {
    let stats = router.get_stats();
    stats.streams.iter().find(|s| s.remote_id == Some(ctx.context_id())).expect("its stream").stats.bytes_out
}

/// Through `mid`: with nothing registered, `NoExecutable` naming `mid`; with the arm64 build
/// registered at the master, three arm64 children answer, and the master's link to `first`
/// (the first context of the path to `mid`) carried the build once. `argv` enters the arm64
/// root from `mid`.
fn arm64_children_through(
    router: &Router,
    first: &mitogen::master::Context,
    mid: &mitogen::master::Context,
    argv: Vec<OsString>,
) {
    let (_, build) = mitogen_tests::arm64().unwrap();
    let via = || Options { via: Some(mid.clone()), ..Options::default() };
    let e = router.command(spec(argv.clone()), via()).unwrap_err();
    assert!(matches!(e.stream_kind_of(), Some(StreamErrorKind::NoExecutable { .. })), "{e}");
    let text = e.to_string();
    let mid_name = mid.name().unwrap();
    assert!(text.contains(&format!("{mid_name:?})")), "names the intermediate: {text}");
    assert!(text.contains("nor in its parent"), "and that its parent has none: {text}");
    assert!(text.contains("cargo build --release --target aarch64-unknown-linux-musl"), "{text}");
    router.add_executable(&build).unwrap();
    let (_, sha) = mitogen::parent::shipped_digest(&build).unwrap();
    let before = bytes_to(router, first);
    let mut first_link = 0;
    for i in 0..3 {
        let ctx = router.command(spec(argv.clone()), via()).unwrap_or_else(|e| panic!("arm64 child {i}: {e}"));
        assert_eq!(ctx.call(arch, ()).unwrap(), "aarch64", "child {i}");
        assert!(ctx.call(whoami, ()).unwrap().2.ends_with(&sha), "child {i} runs the arm64 build");
        if i == 0 {
            first_link = bytes_to(router, first) - before;
        }
    }
    let later = bytes_to(router, first) - before - first_link;
    eprintln!("first link: {first_link} bytes for the first arm64 child, {later} for the next two");
    // The build, compressed, is megabytes; a connect through `mid` without it, a few KiB.
    assert!(first_link > 1 << 20, "the first link carried the build: {first_link} bytes");
    assert!(later < 256 << 10, "and only once: {later} bytes for the next two children");
}

#[test]
fn an_arm64_target_through_a_local_intermediate_gets_the_build_the_master_has_once() {
    // Issue 32: an x86_64 intermediate has no arm64 build; it asks its parent (GET_MODULE),
    // keeps the answer, and serves its later children from it.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Arm64) {
        return;
    }
    run(|| {
        let (root, _) = mitogen_tests::arm64().unwrap();
        let router = Router::new(None).unwrap();
        let mid = router.local(Options { name: Some("mid".into()), ..Options::default() }).unwrap();
        arm64_children_through(&router, &mid, &mid, words(&["chroot", &root.display().to_string()]));
        router.shutdown_and_join();
    });
}

#[test]
fn an_intermediate_sent_a_whole_build_with_debug_info_keeps_it_and_serves_its_children() {
    // Issue 23: with ship_debug_info on, the master answers an intermediate's request for the
    // arm64 build with the whole file; the intermediate checks it by that sha256 and ships its
    // own children by its own setting (off: the build without debug sections). Alone: the
    // setting is the process's.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Arm64) {
        return;
    }
    mitogen_tests::run_alone(|| {
        let (root, build) = mitogen_tests::arm64().unwrap();
        let (_, stripped) = mitogen::parent::shipped_digest(&build).unwrap();
        let router = Router::new(None).unwrap();
        router.add_executable(&build).unwrap();
        let mid = router.local(Options::default()).unwrap();
        router.ship_debug_info(true);
        let via = Options { via: Some(mid.clone()), ..Options::default() };
        let ctx = router.command(spec(words(&["chroot", &root.display().to_string()])), via);
        router.ship_debug_info(false);
        let ctx = ctx.unwrap();
        assert_eq!(ctx.call(arch, ()).unwrap(), "aarch64");
        assert!(ctx.call(whoami, ()).unwrap().2.ends_with(&stripped), "the build without debug sections");
        router.shutdown_and_join();
    });
}

#[test]
fn an_arm64_target_through_ssh_and_sudo_gets_the_build_the_master_has_once() {
    // Issue 32: master -> ssh (mitogen-user) -> sudo (root, for chroot) -> the arm64 root: the
    // sudo context asks the ssh context, which asks the master.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Arm64)
        || !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd)
    {
        return;
    }
    run(|| {
        let (root, _) = mitogen_tests::arm64().unwrap();
        let sshd = mitogen_tests::sshd::Sshd::start("arm64-via");
        let router = Router::new(None).unwrap();
        let ssh = SshOptions { identity_file: None, password: Some("userpw".into()), ..sshd.ssh("mitogen-user") };
        let user = router.ssh(ssh, Options::default()).unwrap();
        let root_ctx =
            router.sudo(SudoOptions::default(), Options { via: Some(user.clone()), ..Options::default() }).unwrap();
        arm64_children_through(&router, &user, &root_ctx, words(&["chroot", &root.display().to_string()]));
        router.shutdown_and_join();
    });
}

#[test]
fn a_build_in_cargos_layout_beside_the_program_is_found_and_shipped_without_any_call() {
    // Issue 32: a program (tests/bin/discover.rs) built for this machine and, by
    // tests/builds.sh, for x86_64-unknown-linux-musl; run against a target whose glibc (2.17)
    // its own build does not fit, it finds target/x86_64-unknown-linux-musl/<profile>/discover
    // with no add_executable call, and the child runs that very file.
    if cfg!(target_env = "musl") {
        // The static build fits that target itself: nothing is looked for.
        return;
    }
    if !mitogen_tests::provisioned(mitogen_tests::Needs::StaticBuild) {
        return;
    }
    run(|| {
        let program = Path::new(env!("CARGO_BIN_EXE_discover"));
        let (profile_dir, target_dir) = (program.parent().unwrap(), program.parent().unwrap().parent().unwrap());
        let beside =
            target_dir.join("x86_64-unknown-linux-musl").join(profile_dir.file_name().unwrap()).join("discover");
        assert!(beside.is_file(), "tests/builds.sh built {}", beside.display());
        let tmp = TempDir::new("discover");
        let out = std::process::Command::new(program)
            .args(fake_target(tmp.path(), None, Some("glibc 2.17")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (_, sha) = mitogen::parent::shipped_digest(&beside).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha, "the child runs the build found beside it");
        let (_, own) = mitogen::parent::shipped_digest(program).unwrap();
        assert_ne!(own, sha);
    });
}

#[test]
fn an_i686_target_gets_the_32_bit_build_registered_for_it_or_a_clear_error() {
    // Issue 32: `setarch i686` makes `uname -m` say i686 (this kernel runs 32-bit x86
    // programs): stage 1 reports it; with nothing that fits, a NoExecutable error naming the
    // i686 target rustc has; with this suite's i686 build registered (a 32-bit ELF), calls are
    // answered there, by a 32-bit process.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::I686) {
        return;
    }
    run(|| {
        let build = mitogen_tests::i686_build().unwrap();
        let argv = words(&["setarch", "i686"]);
        let router = Router::new(None).unwrap();
        let e = router.command(spec(argv.clone()), Options::default()).unwrap_err();
        assert!(
            matches!(e.stream_kind_of(), Some(StreamErrorKind::NoExecutable { target }) if target.starts_with("Linux i686")),
            "{e}"
        );
        assert!(e.to_string().contains("cargo build --release --target i686-unknown-linux-musl"), "{e}");
        router.add_executable(&build).unwrap();
        let ctx = router.command(spec(argv), Options::default()).unwrap();
        assert_eq!(ctx.call(arch, ()).unwrap(), "x86");
        let (_, sha) = mitogen::parent::shipped_digest(&build).unwrap();
        assert!(ctx.call(whoami, ()).unwrap().2.ends_with(&sha), "runs the i686 build");
        router.shutdown_and_join();
    });
}

#[test]
fn an_arm64_target_gets_the_arm64_build_registered_for_it_or_a_clear_error() {
    // Issue 22: a root of one static arm64 busybox, entered with chroot, where qemu-user runs
    // every program (binfmt_misc): stage 1 reports aarch64; with nothing registered that fits,
    // a NoExecutable error; with this suite's aarch64 build registered, calls are answered
    // there, by an aarch64 process.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Arm64) {
        return;
    }
    run(|| {
        let (root, build) = mitogen_tests::arm64().unwrap();
        let argv = words(&["chroot", &root.display().to_string()]);
        let router = Router::new(None).unwrap();
        let e = router.command(spec(argv.clone()), Options::default()).unwrap_err();
        let kind = StreamErrorKind::NoExecutable { target: "Linux aarch64, no C library".into() };
        assert_eq!(e.stream_kind_of(), Some(&kind), "{e}");
        assert!(e.to_string().contains("cargo build --release --target aarch64-unknown-linux-musl"), "{e}");
        router.add_executable(&build).unwrap();
        let ctx = router.command(spec(argv), Options::default()).unwrap();
        assert_eq!(ctx.call(arch, ()).unwrap(), "aarch64");
        let (_, sha) = mitogen::parent::shipped_digest(&build).unwrap();
        assert!(ctx.call(whoami, ()).unwrap().2.ends_with(&sha), "runs the aarch64 build");
        assert_eq!(ctx.call(arch, ()).unwrap(), "aarch64", "and answers again");
        router.shutdown_and_join();
    });
}
