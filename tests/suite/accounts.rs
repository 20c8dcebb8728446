//! sudo, su and doas with the real tools and the accounts and rules of `tests/provision.sh`.
//! The suite runs as root, where sudo and su never ask for a password, so each test first
//! starts a context as `mitogen-user` (through the generic method and `setpriv`) and goes on
//! from there with `via=`: the prompts are real.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use mitogen::core::StreamErrorKind;
use mitogen::master::{CommandSpec, Context, DoasOptions, Options, Router, SuOptions, SudoOptions};
use mitogen_tests::run;
use mitogen_tests::sshd::Sshd;

/// `(uid, $HOME, the executable it runs from)`.
fn who() -> (u32, String, String) {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
    (uid, std::env::var("HOME").unwrap_or_default(), exe)
}

fn env_var(name: String) -> Option<String> {
    std::env::var(name).ok()
}

fn cwd() -> String {
    std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default()
}

mitogen::remote!(who, env_var, cwd);

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no account {user}"))
}

/// A context running as `user` (from root, through setpriv), with `MITOGEN_MARK=1` in its
/// environment.
fn as_user(router: &Router, user: &str) -> Context {
    let argv = [
        "setpriv",
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        "--",
        "env",
        "-u",
        "XDG_CACHE_HOME",
        &format!("HOME=/home/{user}"),
        &format!("USER={user}"),
        &format!("LOGNAME={user}"),
        "MITOGEN_MARK=1",
    ]
    .map(Into::into)
    .to_vec();
    let options = Options { name: Some(user.to_owned()), ..Options::default() };
    router.command(CommandSpec { argv, ..Default::default() }, options).unwrap()
}

fn via(ctx: &Context) -> Options {
    Options { via: Some(ctx.clone()), ..Options::default() }
}

fn password_error(e: &mitogen::Error, text: &str) {
    assert_eq!(e.stream_kind_of(), Some(&StreamErrorKind::Password), "{e}");
    assert!(e.to_string().contains(text), "{e}");
}

/// The context runs from a copy in `home`'s private cache, which only its account can read.
fn runs_from_private_cache(exe: &str, home: &str, uid: u32) {
    let dir = format!("{home}/.cache/mitogen");
    assert!(exe.starts_with(&format!("{dir}/")), "{exe} is not in {dir}");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (uid, 0o700), "{dir}");
}

#[test]
fn sudo_without_a_password_runs_as_root_from_roots_own_cache() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        assert_ne!(user.call(who, ()).unwrap().0, 0);
        let root = router.sudo(SudoOptions::default(), via(&user)).unwrap();
        assert_eq!(root.name(), Some("mitogen-user.sudo.root"));
        let (uid, home, exe) = root.call(who, ()).unwrap();
        assert_eq!((uid, home.as_str()), (0, "/root"));
        runs_from_private_cache(&exe, "/root", 0);
        router.shutdown_and_join();
    });
}

#[test]
fn sudo_types_the_right_password_and_reports_a_wrong_or_missing_one() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let other = |password: Option<&str>| SudoOptions {
            password: password.map(Into::into),
            ..SudoOptions::new("mitogen-other")
        };
        let ctx = router.sudo(other(Some("userpw")), via(&user)).unwrap();
        let (uid, home, exe) = ctx.call(who, ()).unwrap();
        assert_eq!(uid, uid_of("mitogen-other"));
        runs_from_private_cache(&exe, &home, uid);

        let e = router.sudo(other(Some("wrong-pw-x")), via(&user)).unwrap_err();
        password_error(&e, "sudo password is incorrect");
        assert!(!e.to_string().contains("wrong-pw-x"), "{e}");
        let e = router.sudo(other(None), via(&user)).unwrap_err();
        password_error(&e, "sudo password is required");
        router.shutdown_and_join();
    });
}

#[test]
fn sudo_flags_set_home_preserve_env_and_login_take_effect() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let plain = router.sudo(SudoOptions::default(), via(&user)).unwrap();
        assert_eq!(plain.call(env_var, ("MITOGEN_MARK".to_owned(),)).unwrap(), None, "sudo resets the environment");
        let kept = router.sudo(SudoOptions { preserve_env: true, ..SudoOptions::default() }, via(&user)).unwrap();
        assert_eq!(kept.call(env_var, ("MITOGEN_MARK".to_owned(),)).unwrap().as_deref(), Some("1"));
        // -E keeps HOME too; -H sets it to the target's.
        let home = SudoOptions { preserve_env: true, set_home: true, ..SudoOptions::default() };
        assert_eq!(router.sudo(home, via(&user)).unwrap().call(who, ()).unwrap().1, "/root");
        // -i: through root's login shell, which starts in root's home.
        let login = SudoOptions { sudo_args: vec!["-i".into()], ..SudoOptions::default() };
        assert_eq!(router.sudo(login, via(&user)).unwrap().call(cwd, ()).unwrap(), "/root");
        let bad = SudoOptions { sudo_args: vec!["--chroot=/".into()], ..SudoOptions::default() };
        let e = router.sudo(bad, via(&user)).unwrap_err();
        assert!(e.is_stream() && e.to_string().contains("unsupported option"), "{e}");
        router.shutdown_and_join();
    });
}

#[test]
fn sudo_args_are_read_as_sudo_reads_them() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 20: `-Hu mitogen-other` was refused as an unsupported option "-Hu".
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let other = uid_of("mitogen-other");
        for args in
            [&["-Hu", "mitogen-other"][..], &["-EHumitogen-other"], &["--set-home", "--user=mitogen-other", "--"]]
        {
            let sudo = SudoOptions {
                sudo_args: args.iter().map(|a| a.to_string()).collect(),
                password: Some("userpw".into()),
                ..SudoOptions::default()
            };
            let ctx = router.sudo(sudo, via(&user)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(ctx.name(), Some("mitogen-user.sudo.mitogen-other"));
            let (uid, home, _) = ctx.call(who, ()).unwrap();
            assert_eq!((uid, home.as_str()), (other, "/home/mitogen-other"), "{args:?}: -H and -u took effect");
            let mark = ctx.call(env_var, ("MITOGEN_MARK".to_owned(),)).unwrap();
            assert_eq!(mark.is_some(), args[0].starts_with("-E"), "{args:?}: -E only where given");
            ctx.shutdown(true).unwrap();
        }
        let bad = SudoOptions { sudo_args: vec!["-Hk".into()], ..SudoOptions::default() };
        let e = router.sudo(bad, via(&user)).unwrap_err();
        assert!(e.is_stream() && e.to_string().contains("unsupported option \"-k\""), "{e}");
        router.shutdown_and_join();
    });
}

fn process_title() -> String {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}
mitogen::remote!(process_title);

#[test]
fn through_sudo_the_child_runs_under_the_command_prefix_with_its_remote_name_in_ps() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    // Issue 21: sudo dropped `command_prefix`, and `ps` showed the cached path.
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let options = Options {
            command_prefix: vec!["env".into(), "MITOGEN_PREFIXED=as root".into()],
            remote_name: Some("db-1".into()),
            ..via(&user)
        };
        let root = router.sudo(SudoOptions::default(), options).unwrap();
        assert_eq!(root.call(who, ()).unwrap().0, 0);
        assert_eq!(root.call(env_var, ("MITOGEN_PREFIXED".to_owned(),)).unwrap().as_deref(), Some("as root"));
        assert_eq!(root.call(process_title, ()).unwrap(), "mitogen:db-1");
        router.shutdown_and_join();
    });
}

#[test]
fn sudo_with_requiretty_and_with_pwfeedback() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        // requiretty: the hybrid transport's PTY is sudo's controlling terminal.
        let tty = as_user(&router, "mitogen-tty");
        assert_eq!(router.sudo(SudoOptions::default(), via(&tty)).unwrap().call(who, ()).unwrap().0, 0);
        // pwfeedback: sudo echoes '*' per character after the prompt; that is no second prompt.
        let fb = as_user(&router, "mitogen-fb");
        let with = |pw: &str| SudoOptions { password: Some(pw.into()), ..SudoOptions::default() };
        assert_eq!(router.sudo(with("fbpw"), via(&fb)).unwrap().call(who, ()).unwrap().0, 0);
        password_error(&router.sudo(with("nope"), via(&fb)).unwrap_err(), "sudo password is incorrect");
        router.shutdown_and_join();
    });
}

#[test]
fn su_types_the_password_on_its_pty_and_reports_a_wrong_or_missing_one() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let to_other = |pw: Option<&str>| SuOptions { password: pw.map(Into::into), ..SuOptions::new("mitogen-other") };
        let ctx = router.su(to_other(Some("otherpw")), via(&user)).unwrap();
        assert_eq!(ctx.name(), Some("mitogen-user.su.mitogen-other"));
        let (uid, home, exe) = ctx.call(who, ()).unwrap();
        assert_eq!(uid, uid_of("mitogen-other"));
        runs_from_private_cache(&exe, &home, uid);
        // Binary data crosses the PTY unchanged.
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let back = ctx.call(crate::command::echo_blob, (mitogen::core::Blob(data.clone()),)).unwrap();
        assert!(back.0 == data);

        password_error(&router.su(to_other(Some("bad")), via(&user)).unwrap_err(), "su password is incorrect");
        password_error(&router.su(to_other(None), via(&user)).unwrap_err(), "su password is required");
        // From root, su asks for no password.
        let from_root = router.su(SuOptions::new("mitogen-other"), Options::default()).unwrap();
        assert_eq!(from_root.call(who, ()).unwrap().0, uid_of("mitogen-other"));
        router.shutdown_and_join();
    });
}

#[test]
fn doas_with_and_without_a_password() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let root = router.doas(DoasOptions::default(), via(&user)).unwrap();
        assert_eq!(root.name(), Some("mitogen-user.doas.root"));
        assert_eq!(root.call(who, ()).unwrap().0, 0);
        let to_other =
            |pw: Option<&str>| DoasOptions { password: pw.map(Into::into), ..DoasOptions::new("mitogen-other") };
        assert_eq!(
            router.doas(to_other(Some("userpw")), via(&user)).unwrap().call(who, ()).unwrap().0,
            uid_of("mitogen-other")
        );
        password_error(&router.doas(to_other(Some("bad")), via(&user)).unwrap_err(), "doas password is incorrect");
        password_error(&router.doas(to_other(None), via(&user)).unwrap_err(), "doas password is required");
        router.shutdown_and_join();
    });
}

#[test]
fn chains_sudo_then_su_sudo_then_sudo_and_ssh_then_sudo() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Sshd) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        // local -> sudo -> su
        let other = SudoOptions { password: Some("userpw".into()), ..SudoOptions::new("mitogen-other") };
        let other = router.sudo(other, via(&user)).unwrap();
        let back = SuOptions { password: Some("userpw".into()), ..SuOptions::new("mitogen-user") };
        let back = router.su(back, via(&other)).unwrap();
        assert_eq!(back.name(), Some("mitogen-user.sudo.mitogen-other.su.mitogen-user"));
        assert_eq!(back.call(who, ()).unwrap().0, uid_of("mitogen-user"));
        // sudo -> sudo: root needs no password.
        let root = router.sudo(SudoOptions::default(), via(&user)).unwrap();
        let again = router.sudo(SudoOptions::new("mitogen-other"), via(&root)).unwrap();
        assert_eq!(again.call(who, ()).unwrap().0, uid_of("mitogen-other"));
        // ssh -> sudo: a password login, then sudo on "the host".
        let sshd = Sshd::start("then-sudo");
        let ssh = mitogen::master::SshOptions {
            identity_file: None,
            password: Some("userpw".into()),
            ..sshd.ssh("mitogen-user")
        };
        let remote = router.ssh(ssh, Options::default()).unwrap();
        let remote_root = router.sudo(SudoOptions::default(), via(&remote)).unwrap();
        assert_eq!(remote_root.name(), Some(format!("ssh.127.0.0.1:{}.sudo.root", sshd.port()).as_str()));
        assert_eq!(remote_root.call(who, ()).unwrap().0, 0);
        router.shutdown_and_join();
    });
}

#[test]
fn a_command_that_dies_at_the_prompt_is_a_clear_error_not_a_hang() {
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        // It prints sudo's prompt on its terminal and exits while the password is being typed.
        let sudo_path = concat!(env!("CARGO_MANIFEST_DIR"), "/stubs/die-at-prompt").into();
        let sudo = SudoOptions { sudo_path, password: Some("pw".into()), ..SudoOptions::default() };
        let start = Instant::now();
        let e = router.sudo(sudo, Options::default()).unwrap_err();
        assert!(matches!(e.stream_kind_of(), Some(StreamErrorKind::Eof { .. })), "{e}");
        assert!(e.to_string().contains("exited with status 1"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
        router.shutdown_and_join();
    });
}

#[test]
fn the_tool_paths_given_are_the_ones_run() {
    // Issue 21: every non-default tool path through a wrapper that records its use.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = mitogen_tests::TempDir::new("tool-paths");
        let used = tmp.path().join("used");
        let wrapper = |tool: &str| {
            mitogen_tests::recording_wrapper(tmp.path(), tool, &format!("/usr/bin/{tool}"), &used).into_os_string()
        };
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let sudo = SudoOptions { sudo_path: wrapper("sudo"), ..SudoOptions::default() };
        assert_eq!(router.sudo(sudo, via(&user)).unwrap().call(who, ()).unwrap().0, 0);
        let su =
            SuOptions { su_path: wrapper("su"), password: Some("otherpw".into()), ..SuOptions::new("mitogen-other") };
        assert_eq!(router.su(su, via(&user)).unwrap().call(who, ()).unwrap().0, uid_of("mitogen-other"));
        let doas = DoasOptions { doas_path: wrapper("doas"), ..DoasOptions::default() };
        assert_eq!(router.doas(doas, via(&user)).unwrap().call(who, ()).unwrap().0, 0);
        assert_eq!(mitogen_tests::recorded_tools(&used), ["sudo", "su", "doas"], "each wrapper ran, once");
        router.shutdown_and_join();
    });
}

#[test]
fn sudo_passes_the_selinux_role_and_type() {
    // Issue 21: `selinux_role` and `selinux_type` reach sudo as `-r` and `-t`. SELinux is off on
    // this machine, so sudo accepts them and runs the command unconfined.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let tmp = mitogen_tests::TempDir::new("selinux");
        let used = tmp.path().join("used");
        let sudo_path = mitogen_tests::recording_wrapper(tmp.path(), "sudo", "/usr/bin/sudo", &used).into_os_string();
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let sudo = SudoOptions {
            sudo_path,
            selinux_role: Some("staff_r".into()),
            selinux_type: Some("staff_t".into()),
            ..SudoOptions::default()
        };
        assert_eq!(router.sudo(sudo, via(&user)).unwrap().call(who, ()).unwrap().0, 0);
        let runs = mitogen_tests::recorded_runs(&used);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].1.contains("-r staff_r -t staff_t"), "{runs:?}");
        router.shutdown_and_join();
    });
}

#[test]
fn the_su_and_doas_prompt_texts_given_are_the_ones_matched() {
    // Issue 21: custom `password_prompt` and `incorrect_prompts`. A prompt text the tool does not
    // print is never answered (the connect times out showing the tool's own prompt); one it
    // prints in another case is; a refusal text it does not print leaves a wrong password to
    // show as the tool's exit instead of a `PasswordError`.
    if !mitogen_tests::provisioned(mitogen_tests::Needs::Accounts) {
        return;
    }
    run(|| {
        let router = Router::new(None).unwrap();
        let user = as_user(&router, "mitogen-user");
        let short = Options { connect_timeout: Duration::from_secs(10), ..via(&user) };
        let unanswered = |e: mitogen::Error, shown: &str| {
            assert!(e.is_timeout(), "{e}");
            assert!(e.to_string().contains(shown), "the last lines show the tool's prompt: {e}");
        };
        let unrecognised = |e: mitogen::Error| {
            assert!(matches!(e.stream_kind_of(), Some(StreamErrorKind::Eof { .. })), "{e}");
            assert!(e.to_string().contains("exited with status 1"), "{e}");
        };

        let su = |password_prompt: &str, pw: &str| SuOptions {
            password: Some(pw.into()),
            password_prompt: password_prompt.into(),
            ..SuOptions::new("mitogen-other")
        };
        unanswered(router.su(su("Kennwort:", "otherpw"), short.clone()).unwrap_err(), "Password:");
        let ctx = router.su(su("PASSWORD", "otherpw"), via(&user)).unwrap();
        assert_eq!(ctx.call(who, ()).unwrap().0, uid_of("mitogen-other"));
        let refused = SuOptions { incorrect_prompts: vec!["falsches Passwort".into()], ..su("Password:", "bad") };
        unrecognised(router.su(refused, via(&user)).unwrap_err());

        let doas = |password_prompt: &str, pw: &str| DoasOptions {
            password: Some(pw.into()),
            password_prompt: password_prompt.into(),
            ..DoasOptions::new("mitogen-other")
        };
        unanswered(router.doas(doas("Kennwort:", "userpw"), short).unwrap_err(), "password:");
        let ctx = router.doas(doas("(MITOGEN-USER@", "userpw"), via(&user)).unwrap();
        assert_eq!(ctx.call(who, ()).unwrap().0, uid_of("mitogen-other"));
        let refused = DoasOptions { incorrect_prompts: vec!["falsches Passwort".into()], ..doas("Password:", "bad") };
        unrecognised(router.doas(refused, via(&user)).unwrap_err());
        router.shutdown_and_join();
    });
}
