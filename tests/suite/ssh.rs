//! The ssh method against a real OpenSSH server on loopback (`tests/sshd.rs`; the accounts and
//! keys come from `tests/provision.sh`): key and password logins, every host-key mode, the
//! errors ssh reports, chains through `via=`, a host that dies mid-call, a port that never
//! answers, and the executable shipped once per account.

use std::time::{Duration, Instant};

use mitogen::core::{Blob, StreamErrorKind};
use mitogen::master::{CheckHostKeys, Options, Router, SshOptions};
use mitogen_tests::sshd::{ssh_args, Sshd};
use mitogen_tests::{run, run_alone};

/// `(uid, user name, $HOME)` of the process it runs in.
fn account() -> (u32, String, String) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    (
        uid,
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default(),
        std::env::var("HOME").unwrap_or_default(),
    )
}

fn exe_path() -> String {
    std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default()
}

fn echo(b: Blob) -> Blob {
    b
}

mitogen::remote!(account, exe_path, echo);

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no account {user}"))
}

fn kind(e: &mitogen::core::Error) -> Option<StreamErrorKind> {
    e.stream_kind_of().cloned()
}

#[test]
fn a_key_login_runs_calls_as_the_account_on_the_host() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("key");
        let router = Router::new(None).unwrap();
        let ctx = router.ssh(sshd.ssh("mitogen-key"), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some(format!("ssh.127.0.0.1:{}", sshd.port()).as_str()));
        let (uid, user, home) = ctx.call(account, ()).unwrap();
        assert_eq!((uid, user.as_str(), home.as_str()), (uid_of("mitogen-key"), "mitogen-key", "/home/mitogen-key"));
        assert!(ctx.call(exe_path, ()).unwrap().starts_with("/home/mitogen-key/.cache/mitogen/"));
        ctx.shutdown(true).unwrap();
        router.shutdown_and_join();
    });
}

fn env_of(name: String) -> Option<String> {
    std::env::var(name).ok()
}

fn process_title() -> String {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

mitogen::remote!(env_of, process_title);

#[test]
fn over_ssh_the_child_runs_under_the_command_prefix_with_its_remote_name_in_ps() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    // Issue 21: ssh dropped `command_prefix`, and `ps` on the host showed the cached path.
    run(|| {
        let sshd = Sshd::start("prefix");
        let router = Router::new(None).unwrap();
        let options = Options {
            command_prefix: vec!["env".into(), "MITOGEN_PREFIXED=over ssh".into()],
            remote_name: Some("web-7".into()),
            ..Options::default()
        };
        let ctx = router.ssh(sshd.ssh("mitogen-key"), options).unwrap();
        assert_eq!(ctx.call(env_of, ("MITOGEN_PREFIXED".to_owned(),)).unwrap().as_deref(), Some("over ssh"));
        assert_eq!(ctx.call(process_title, ()).unwrap(), "mitogen:web-7");
        ctx.shutdown(true).unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn a_profiled_context_over_ssh_writes_its_profile_on_the_host_as_the_account() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    run(|| {
        let sshd = Sshd::start("profiling");
        let since = crate::unix_now();
        let router = Router::new(None).unwrap();
        let ctx = router.ssh(sshd.ssh("mitogen-key"), Options { profiling: true, ..Options::default() }).unwrap();
        let pid = ctx.call(crate::local_whoami, ()).unwrap().1;
        ctx.shutdown(true).unwrap();
        // The master waits for ssh, which ends once the remote process has written and exited.
        router.shutdown_and_join();
        let files = crate::profiles_of(std::path::Path::new("/tmp"), pid, since);
        let main = files.get("main").unwrap_or_else(|| panic!("no profile of pid {pid} in /tmp: {files:?}")).clone();
        let owner = std::fs::metadata(&main).unwrap().uid();
        let parsed = mitogen::profiler::read_folded(&main);
        files.values().for_each(|f| std::fs::remove_file(f).unwrap());
        assert_eq!(owner, uid_of("mitogen-key"));
        parsed.unwrap();
    });
}

#[test]
fn a_password_is_typed_at_the_prompt_on_a_pty() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("password");
        let router = Router::new(None).unwrap();
        let ssh = SshOptions { identity_file: None, password: Some("userpw".into()), ..sshd.ssh("mitogen-user") };
        let ctx = router.ssh(ssh, Options::default()).unwrap();
        assert_eq!(ctx.call(account, ()).unwrap().0, uid_of("mitogen-user"));
        assert!(sshd.log().contains("Accepted password for mitogen-user"), "{}", sshd.log());
        ctx.shutdown(true).unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn a_wrong_password_is_a_password_error_that_does_not_show_it() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("wrong-password");
        let router = Router::new(None).unwrap();
        let ssh = SshOptions { identity_file: None, password: Some("not-it-x9".into()), ..sshd.ssh("mitogen-user") };
        let e = router.ssh(ssh, Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::Password), "{e}");
        let text = e.to_string();
        assert!(text.contains("SSH password is incorrect"), "{text}");
        assert!(!text.contains("not-it-x9") && !format!("{e:?}").contains("not-it-x9"), "{text}");
        router.shutdown_and_join();
    });
}

#[test]
fn a_password_account_without_a_password_says_one_is_needed() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("no-password");
        let router = Router::new(None).unwrap();
        // BatchMode: ssh does not ask; the server's refusal names the password method.
        let e = router.ssh(sshd.ssh("mitogen-user"), Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::Password), "{e}");
        assert!(e.to_string().contains("SSH password was requested, but none specified"), "{e}");
        router.shutdown_and_join();
    });
}

#[test]
fn an_unknown_host_key_is_refused_accepted_or_ignored_as_asked() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("host-keys");
        let router = Router::new(None).unwrap();
        let unknown = sshd.empty_known_hosts();
        let with = |mode| SshOptions { check_host_keys: mode, ssh_args: ssh_args(&unknown), ..sshd.ssh("mitogen-key") };

        let e = router.ssh(with(CheckHostKeys::Enforce), Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::HostKey), "{e}");
        assert!(e.to_string().contains("mismatching host key"), "{e}");

        let ctx = router.ssh(with(CheckHostKeys::Ignore), Options::default()).unwrap();
        ctx.call(account, ()).unwrap();
        assert_eq!(std::fs::read_to_string(&unknown).unwrap(), "", "ignore remembers nothing");

        // accept: ssh asks on the PTY, the answer is typed, and the key is remembered.
        let ctx = router.ssh(with(CheckHostKeys::Accept), Options::default()).unwrap();
        ctx.call(account, ()).unwrap();
        let known = std::fs::read_to_string(&unknown).unwrap();
        assert!(known.contains(&format!("[127.0.0.1]:{}", sshd.port())), "{known:?}");
        // ...so enforce now passes.
        router.ssh(with(CheckHostKeys::Enforce), Options::default()).unwrap().call(account, ()).unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn permission_denied_printed_by_a_login_shell_is_not_an_authentication_failure() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("noisy");
        let router = Router::new(None).unwrap();
        // Its shell prints a banner on stdout and "...: Permission denied" on stderr first.
        let ctx = router.ssh(sshd.ssh("mitogen-noisy"), Options::default()).unwrap();
        assert_eq!(ctx.call(account, ()).unwrap().0, uid_of("mitogen-noisy"));
        router.shutdown_and_join();
    });
}

#[test]
fn ssh_args_reach_ssh_and_compression_on_or_off_carries_every_byte() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let sshd = Sshd::start("args");
        let router = Router::new(None).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        for compression in [true, false] {
            // The account comes from ssh_args, not `username`.
            let mut ssh = SshOptions { username: None, compression, ..sshd.ssh("-") };
            ssh.ssh_args.extend(["-o".into(), "User=mitogen-key".into()]);
            let ctx = router.ssh(ssh, Options::default()).unwrap();
            assert_eq!(ctx.call(account, ()).unwrap().0, uid_of("mitogen-key"));
            let back = ctx.call(echo, (Blob(data.clone()),)).unwrap();
            assert!(back.0 == data, "compression {compression}: 1 MiB of every byte value crosses unchanged");
            ctx.shutdown(true).unwrap();
        }
        router.shutdown_and_join();
    });
}

#[test]
fn ssh_then_ssh_then_local_chains_through_via() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let (a, b) = (Sshd::start("chain-a"), Sshd::start("chain-b"));
        let router = Router::new(None).unwrap();
        let first = router.ssh(a.ssh("mitogen-key"), Options::default()).unwrap();
        // The second hop runs from mitogen-key's account on "host a", with that account's key.
        let hop = SshOptions {
            port: Some(b.port()),
            username: Some("mitogen-noisy".into()),
            identity_file: Some("/home/mitogen-key/.ssh/id_ed25519".into()),
            check_host_keys: CheckHostKeys::Ignore,
            ssh_args: vec!["-F".into(), "/dev/null".into()],
            ..SshOptions::new("127.0.0.1")
        };
        let second = router.ssh(hop, Options { via: Some(first.clone()), ..Options::default() }).unwrap();
        let third = router.local(Options { via: Some(second.clone()), ..Options::default() }).unwrap();
        let names = [a.port(), b.port()].map(|p| format!("ssh.127.0.0.1:{p}"));
        assert_eq!(second.name(), Some(format!("{}.{}", names[0], names[1]).as_str()));
        assert!(third.name().unwrap().starts_with(&format!("{}.{}.local.", names[0], names[1])), "{:?}", third.name());
        assert_eq!(third.call(account, ()).unwrap().0, uid_of("mitogen-noisy"));
        let (_, _, parents) = third.call(crate::local_whoami, ()).unwrap();
        assert_eq!(parents, vec![second.context_id(), first.context_id(), 0]);
        router.shutdown_and_join();
    });
}

#[test]
fn every_caller_wakes_with_an_error_when_sshd_dies_mid_call() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let mut sshd = Sshd::start("killed");
        let router = Router::new(None).unwrap();
        let ctx = router.ssh(sshd.ssh("mitogen-key"), Options::default()).unwrap();
        crate::callers_wake_with_an_error_after(&ctx, || sshd.kill());
        router.shutdown_and_join();
    });
}

#[test]
fn a_port_that_never_answers_is_a_timeout_error_within_connect_timeout() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        // The kernel accepts the connection; nothing ever speaks on it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let router = Router::new(None).unwrap();
        let ssh = SshOptions {
            port: Some(port),
            username: Some("mitogen-key".into()),
            check_host_keys: CheckHostKeys::Ignore,
            ..SshOptions::new("127.0.0.1")
        };
        let start = Instant::now();
        let e = router.ssh(ssh, Options { connect_timeout: Duration::from_secs(2), ..Options::default() }).unwrap_err();
        assert!(e.is_timeout(), "{e}");
        // Not the 30 s default, nor for ever: ssh is given no timeout of its own to wait out.
        assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
        assert!(e.to_string().contains(&format!("ssh.127.0.0.1:{port}")), "{e}");
        router.shutdown_and_join();
    });
}

#[test]
fn the_executable_crosses_once_per_account_and_a_read_only_home_caches_elsewhere() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run_alone(|| {
        let sshd = Sshd::start("once");
        // Only this test uses mitogen-rohome: its HOME is not writable, so the cache is in
        // /dev/shm; start from none.
        let cache = format!("/dev/shm/mitogen-{}", uid_of("mitogen-rohome"));
        let _ = std::fs::remove_dir_all(&cache);
        let router = Router::new(None).unwrap();
        let before = mitogen::parent::bootstrap_stats();
        let first = router.ssh(sshd.ssh("mitogen-rohome"), Options::default()).unwrap();
        assert!(first.call(exe_path, ()).unwrap().starts_with(&cache));
        let shipped = mitogen::parent::bootstrap_stats();
        assert_eq!((shipped.connects - before.connects, shipped.shipped - before.shipped), (1, 1));
        assert!(shipped.bytes_sent > before.bytes_sent);
        let second = router.ssh(sshd.ssh("mitogen-rohome"), Options::default()).unwrap();
        second.call(account, ()).unwrap();
        let after = mitogen::parent::bootstrap_stats();
        assert_eq!((after.cached - shipped.cached, after.bytes_sent), (1, shipped.bytes_sent), "nothing sent again");
        router.shutdown_and_join();
        let _ = std::fs::remove_dir_all(&cache);
    });
}

/// `tests/stubs/stub-ssh`: a stand-in for ssh for what OpenSSH 9 cannot show (the pre-7.5
/// refusal text, a host-key question where none was expected); its mode is the host name.
fn stub(host: &str) -> SshOptions {
    SshOptions { ssh_path: concat!(env!("CARGO_MANIFEST_DIR"), "/stubs/stub-ssh").into(), ..SshOptions::new(host) }
}

#[test]
fn the_stub_ssh_shows_the_cases_a_real_sshd_cannot() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        // The boot command, quoted word by word, survives the shell a server hands it to.
        let ctx = router.ssh(stub("plain"), Options::default()).unwrap();
        assert_eq!(ctx.name(), Some("ssh.plain"));
        ctx.call(account, ()).unwrap();

        // OpenSSH before 7.5 printed no "user@host: " before its refusal.
        let e = router.ssh(stub("permdenied-classic"), Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::Password), "{e}");
        assert!(e.to_string().contains("SSH password was requested, but none specified"), "{e}");
        let with_password = SshOptions { password: Some("pw".into()), ..stub("permdenied-classic") };
        let e = router.ssh(with_password, Options::default()).unwrap_err();
        assert!(e.to_string().contains("SSH authentication is incorrect"), "never typed, so not 'incorrect': {e}");

        // A host-key question in enforce mode means ssh_args or a config overrode ours.
        let asks = SshOptions { password: Some("pw".into()), ..stub("hostkey-ask") };
        let e = router.ssh(asks.clone(), Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::HostKey), "{e}");
        assert!(e.to_string().contains("conflicting with check_host_keys"), "{e}");
        // In accept mode the same question is answered on the terminal.
        let accept = SshOptions { check_host_keys: CheckHostKeys::Accept, ..asks };
        router.ssh(accept, Options::default()).unwrap().call(account, ()).unwrap();
        router.shutdown_and_join();
    });
}

#[test]
fn the_ssh_path_given_is_the_one_run() {
    // Issue 21: a non-default `ssh_path`, through a wrapper that records its use.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let tmp = mitogen_tests::TempDir::new("ssh-path");
        let used = tmp.path().join("used");
        let wrapper = mitogen_tests::recording_wrapper(tmp.path(), "ssh", "/usr/bin/ssh", &used);
        let sshd = Sshd::start("path");
        let router = Router::new(None).unwrap();
        let ssh = SshOptions { ssh_path: wrapper.into_os_string(), ..sshd.ssh("mitogen-key") };
        let ctx = router.ssh(ssh, Options::default()).unwrap();
        assert_eq!(ctx.call(account, ()).unwrap().1, "mitogen-key");
        assert_eq!(mitogen_tests::recorded_tools(&used), ["ssh"], "the wrapper ran, once");
        router.shutdown_and_join();
    });
}

/// An `ssh-agent` of the test's own holding `key`, stopped when dropped.
struct Agent {
    child: std::process::Child,
    socket: std::path::PathBuf,
    /// Its stdout, kept open so that nothing it prints later meets a closed pipe.
    _out: std::io::BufReader<std::process::ChildStdout>,
}

impl Agent {
    fn start(dir: &std::path::Path, key: &std::path::Path) -> Agent {
        let socket = dir.join("agent.sock");
        let mut child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It prints its environment once it listens on the socket.
        let out = child.stdout.take().unwrap();
        let ready = Instant::now() + Duration::from_secs(10);
        let said = mitogen::core::sys::wait_readable(std::os::fd::AsFd::as_fd(&out), Some(ready)).unwrap();
        assert!(said, "ssh-agent said nothing within 10 s");
        let (mut line, mut out) = (String::new(), std::io::BufReader::new(out));
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with("SSH_AUTH_SOCK="), "{line}");
        let agent = Agent { child, socket, _out: out };
        let added =
            std::process::Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &agent.socket).output().unwrap();
        assert!(added.status.success(), "ssh-add: {}", String::from_utf8_lossy(&added.stderr));
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn identities_only_offers_the_identity_file_alone_not_the_agents_keys() {
    // Issue 21: `identities_only` end to end: the agent holds the authorized key, the identity
    // file is one the server does not know.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let tmp = mitogen_tests::TempDir::new("identities-only");
        let stranger = tmp.path().join("stranger");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(&stranger)
            .output()
            .unwrap();
        assert!(made.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&made.stderr));
        let agent = Agent::start(tmp.path(), &mitogen_tests::sshd::client_key());
        let sshd = Sshd::start("identities-only");
        let router = Router::new(None).unwrap();
        let with_agent = |identities_only| {
            let mut ssh =
                SshOptions { identity_file: Some(stranger.clone()), identities_only, ..sshd.ssh("mitogen-key") };
            ssh.ssh_args.extend(["-o".into(), format!("IdentityAgent={}", agent.socket.display()).into()]);
            ssh
        };
        let e = router.ssh(with_agent(true), Options::default()).unwrap_err();
        assert_eq!(kind(&e), Some(StreamErrorKind::Password), "only the unknown key was offered: {e}");
        let ctx = router.ssh(with_agent(false), Options::default()).unwrap();
        assert_eq!(ctx.call(account, ()).unwrap().1, "mitogen-key", "the agent's key was offered too");
        router.shutdown_and_join();
    });
}

#[test]
fn ssh_debug_output_is_in_the_debug_log_at_the_level_asked() {
    // Issue 21: `ssh_debug_level` end to end: ssh's `-v` lines reach the log (target
    // `mitogen::stderr`, level debug), and at level 0 ssh prints none.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run_alone(|| {
        log::set_max_level(log::LevelFilter::Debug);
        let sshd = Sshd::start("debug-level");
        let router = Router::new(None).unwrap();
        let ssh_lines = |prefix: &str| {
            let logged = mitogen_tests::logged("mitogen::stderr");
            logged.iter().filter(|(l, _, m)| *l == log::Level::Debug && m.contains(prefix)).count()
        };
        router.ssh(sshd.ssh("mitogen-key"), Options::default()).unwrap().call(account, ()).unwrap();
        assert_eq!(ssh_lines("debug1:"), 0, "LogLevel ERROR at level 0");
        let verbose = SshOptions { ssh_debug_level: 2, ..sshd.ssh("mitogen-key") };
        router.ssh(verbose, Options::default()).unwrap().call(account, ()).unwrap();
        assert!(
            ssh_lines("debug1:") > 0 && ssh_lines("debug2:") > 0,
            "-vv: {:?}",
            mitogen_tests::logged("mitogen::stderr")
        );
        assert_eq!(ssh_lines("debug3:"), 0, "-vv, not -vvv");
        router.shutdown_and_join();
    });
}

#[test]
fn keepalives_notice_a_host_that_stops_answering_and_none_wait_for_ever() {
    // Issue 21: `keepalive_*` end to end. Every session process of the server is stopped with
    // its connection left open: ssh with keepalives (1 s, 2 unanswered) gives up and its caller
    // wakes; without keepalives the same silence goes unnoticed until the host dies.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let mut sshd = Sshd::start("keepalive");
        let router = Router::new(None).unwrap();
        let quick = SshOptions { keepalive_interval: 1, keepalive_count: 2, ..sshd.ssh("mitogen-key") };
        let with = router.ssh(quick, Options::default()).unwrap();
        let without =
            router.ssh(SshOptions { keepalive_enabled: false, ..sshd.ssh("mitogen-key") }, Options::default()).unwrap();
        let noticed = with.call_async(crate::block, (60_000u64,)).unwrap();
        let unnoticed = without.call_async(crate::block, (60_000u64,)).unwrap();
        let start = Instant::now();
        sshd.stop_sessions();
        let e = noticed.get_timeout(mitogen_tests::WAIT).unwrap_err();
        assert!(e.is_channel(), "{e}");
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(20), "noticed after {took:?}");
        assert!(
            unnoticed.get_timeout(Duration::from_secs(3)).unwrap_err().is_timeout(),
            "no keepalives: still waiting"
        );
        sshd.kill();
        assert!(unnoticed.get_timeout(mitogen_tests::WAIT).unwrap_err().is_channel(), "woken once the host died");
        router.shutdown_and_join();
    });
}

#[test]
fn over_ssh_a_debian_11_host_gets_the_static_build_and_never_runs_a_planted_entry() {
    // Issue 22: mitogen-old's sessions are chrooted into a Debian 11 root (glibc 2.31): with
    // nothing registered, a NoExecutable error naming it; with the static build registered, it
    // is chosen and answers there. A symlink planted at the static build's cache entry, and a
    // root-owned file at it, are replaced by a fresh copy and never run.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd)
        || !mitogen_tests::provisioned(mitogen_tests::Needs::StaticBuild)
    {
        return;
    }
    run(|| {
        let sshd = Sshd::start("bullseye");
        let router = Router::new(None).unwrap();
        if cfg!(target_env = "gnu") {
            // (A static build of this suite fits it itself.)
            let e = router.ssh(sshd.ssh("mitogen-old"), Options::default()).unwrap_err();
            let kind = StreamErrorKind::NoExecutable { target: "Linux x86_64, glibc 2.31".into() };
            assert_eq!(e.stream_kind_of(), Some(&kind), "{e}");
        }
        let static_build = mitogen_tests::static_build().unwrap();
        let (_, sha) = mitogen::parent::shipped_digest(&static_build).unwrap();
        router.add_executable(&static_build).unwrap();

        // What the account's cache holds, seen from outside the chroot.
        let root = std::path::Path::new("/var/lib/mitogen-tests/bullseye");
        let cache = root.join("home/mitogen-old/.cache/mitogen");
        let _ = std::fs::remove_dir_all(root.join("home/mitogen-old/.cache"));
        let marker = root.join("tmp/planted-ran");
        let _ = std::fs::remove_file(&marker);
        let uid = uid_of("mitogen-old");
        let own = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        own(&root.join("home/mitogen-old/.cache"));
        own(&cache);
        std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let script = root.join("tmp/planted");
        std::fs::write(&script, "#!/bin/sh\ntouch /tmp/planted-ran\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let entry = cache.join(&sha);
        for plant in ["symlink", "root's file"] {
            let _ = std::fs::remove_file(&entry);
            match plant {
                "symlink" => std::os::unix::fs::symlink("/tmp/planted", &entry).unwrap(),
                _ => {
                    std::fs::copy(&script, &entry).unwrap();
                }
            }
            let ctx = router.ssh(sshd.ssh("mitogen-old"), Options::default()).unwrap();
            assert!(ctx.call(crate::debian_version, ()).unwrap().starts_with("11."), "{plant}: runs in Debian 11");
            let exe = ctx.call(exe_path, ()).unwrap();
            assert_eq!(exe, format!("/home/mitogen-old/.cache/mitogen/{sha}"), "{plant}: the static build");
            assert!(!marker.exists(), "{plant}: the planted entry never ran");
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            assert!(meta.is_file() && std::os::unix::fs::MetadataExt::uid(&meta) == uid, "{plant}: replaced");
            ctx.shutdown(true).unwrap();
        }
        let _ = std::fs::remove_dir_all(root.join("home/mitogen-old/.cache"));
        let _ = std::fs::remove_file(&script);
        router.shutdown_and_join();
    });
}
