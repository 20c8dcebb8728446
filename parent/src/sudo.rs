//! The sudo method (Mitogen `mitogen.sudo`): a context in another account of this machine
//! through `sudo`, on the hybrid transport (data on a socket; sudo's prompt on the PTY that is
//! its controlling terminal).
//!
//! argv: `sudo -p mitogen-sudo-prompt: -u <user> [-E] [-H] [-i] [-r <role>] [-t <type>] --
//! <boot command>`. The password prompt is recognised by our own `-p` prompt first (also in
//! sudo-rs's `[sudo: mitogen-sudo-prompt:] Password: ` form); as a fallback, by a prompt some
//! PAM module or a localized sudo printed instead (it names sudo or a password and waits after
//! a colon, ASCII or full-width: Mitogen issues #1509, #1518). The password is typed once; echo
//! of `*` (`pwfeedback`) does not count as another prompt.

use std::ffi::OsString;

use mitogen_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::command::{Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::prompt::{PasswordState, Prompts};
use crate::transport::Transport;
use mitogen_core::Secret;

/// The prompt sudo is told to print (`-p`), so it can be told from anything else.
pub const SUDO_PROMPT: &str = "mitogen-sudo-prompt:";

/// The sudo method's own options (the keywords of Mitogen's `Router.sudo()`); the common ones
/// are in [`Options`](crate::Options). Serializable, so it works through `via=`.
///
/// ```
/// let sudo = mitogen_parent::SudoOptions {
///     sudo_args: vec!["-H".into(), "-u".into(), "postgres".into()],
///     ..Default::default()
/// };
/// assert_eq!(sudo.default_name().unwrap(), "sudo.postgres");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoOptions {
    /// The account (`-u`); default: `-u` of `sudo_args`, else `root`.
    pub username: Option<String>,
    /// The sudo program; default `sudo`, found on `PATH`.
    pub sudo_path: OsString,
    /// The password to type if sudo asks (this account's or the target's, as sudo is set up).
    pub password: Option<Secret>,
    /// Keep this process's environment (`-E`).
    pub preserve_env: bool,
    /// Set `HOME` to the target account's (`-H`).
    pub set_home: bool,
    /// Run through the target account's login shell (`-i`).
    pub login: bool,
    /// SELinux role (`-r`).
    pub selinux_role: Option<String>,
    /// SELinux type (`-t`).
    pub selinux_type: Option<String>,
    /// Words as a user would pass them to sudo, parsed here as sudo parses them (clusters such
    /// as `-Hu user`, `-uuser`, `--user=user`, `--user user`, `--`), so that what is asked is
    /// what runs: `-E -H -i -r -t -u` (and their long forms) set the fields above (an explicit
    /// field wins), `-S -n` are accepted and ignored, any other option or word is a
    /// `StreamError`.
    pub sudo_args: Vec<String>,
}

impl Default for SudoOptions {
    fn default() -> SudoOptions {
        SudoOptions {
            username: None,
            sudo_path: "sudo".into(),
            password: None,
            preserve_env: false,
            set_home: false,
            login: false,
            selinux_role: None,
            selinux_type: None,
            sudo_args: Vec::new(),
        }
    }
}

/// `sudo_args` parsed.
#[derive(Default)]
struct Flags {
    user: Option<String>,
    preserve_env: bool,
    set_home: bool,
    login: bool,
    role: Option<String>,
    kind: Option<String>,
}

/// The options `sudo_args` may hold (Mitogen's `SUDO_OPTIONS`): short name, long name, and
/// whether it takes a value.
const SUDO_OPTIONS: [(char, &str, bool); 8] = [
    ('E', "preserve-env", false),
    ('H', "set-home", false),
    ('i', "login", false),
    ('r', "role", true),
    ('t', "type", true),
    ('S', "stdin", false),
    ('n', "non-interactive", false),
    ('u', "user", true),
];

/// Parse `sudo_args` as sudo (and Mitogen, with `optparse`) does: clusters of short flags
/// (`-EH`), a short option's value attached or next (`-Hu user`, `-uuser`), long options and
/// unambiguous prefixes of them with the value after `=` or next (`--user=x`, `--user x`,
/// `--pres`), and `--` ending the options. An option not in [`SUDO_OPTIONS`], a missing value
/// and any word that is not an option are a `StreamError` naming them.
fn parse_sudo_args(args: &[String]) -> Result<Flags> {
    let fail = |why: String| Error::stream(format!("sudo: {why} in sudo_args {args:?}"));
    let mut flags = Flags::default();
    let mut set = |short: char, value: Option<String>| match short {
        'E' => flags.preserve_env = true,
        'H' => flags.set_home = true,
        'i' => flags.login = true,
        'r' => flags.role = value,
        't' => flags.kind = value,
        'u' => flags.user = value,
        _ => {} // -S, -n: sudo always runs on a terminal here
    };
    let mut words = args.iter();
    let mut rest = Vec::new();
    while let Some(word) = words.next() {
        if word == "--" {
            rest.extend(words.by_ref());
        } else if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let exact = SUDO_OPTIONS.iter().find(|o| o.1 == name);
            let prefixed: Vec<_> = SUDO_OPTIONS.iter().filter(|o| o.1.starts_with(name)).collect();
            let &(short, long, takes) = match (exact, &prefixed[..]) {
                (Some(o), _) | (None, &[o]) => o,
                (None, []) => return Err(fail(format!("unsupported option \"--{name}\""))),
                (None, many) => {
                    let names: Vec<String> = many.iter().map(|o| format!("--{}", o.1)).collect();
                    return Err(fail(format!("ambiguous option \"--{name}\" ({})", names.join(", "))));
                }
            };
            match (takes, inline) {
                (false, Some(_)) => return Err(fail(format!("option --{long} takes no value"))),
                (false, None) => set(short, None),
                (true, Some(v)) => set(short, Some(v)),
                (true, None) => match words.next() {
                    Some(v) => set(short, Some(v.clone())),
                    None => return Err(fail(format!("option --{long} needs a value"))),
                },
            }
        } else if let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (i, c) in cluster.char_indices() {
                let Some(&(short, _, takes)) = SUDO_OPTIONS.iter().find(|o| o.0 == c) else {
                    return Err(fail(format!("unsupported option \"-{c}\"")));
                };
                if !takes {
                    set(short, None);
                    continue;
                }
                // The rest of the cluster is the value, or else the next word.
                let attached = &cluster[i + c.len_utf8()..];
                let value = match attached {
                    "" => words.next().cloned().ok_or_else(|| fail(format!("option -{c} needs a value")))?,
                    _ => attached.to_owned(),
                };
                set(short, Some(value));
                break;
            }
        } else {
            rest.push(word);
        }
    }
    if !rest.is_empty() {
        return Err(fail(format!("unsupported arguments {rest:?} (only options are allowed)")));
    }
    Ok(flags)
}

impl SudoOptions {
    /// Options for `username`.
    pub fn new(username: impl Into<String>) -> SudoOptions {
        SudoOptions { username: Some(username.into()), ..SudoOptions::default() }
    }

    /// The account the context runs as.
    ///
    /// # Errors
    /// A `StreamError` if `sudo_args` has an unsupported option.
    pub fn target_user(&self) -> Result<String> {
        let flags = parse_sudo_args(&self.sudo_args)?;
        Ok(self.username.clone().or(flags.user).unwrap_or_else(|| "root".into()))
    }

    /// The context's name unless [`Options::name`](crate::Options::name) says otherwise: `sudo.<user>`.
    ///
    /// # Errors
    /// As [`target_user`](Self::target_user).
    pub fn default_name(&self) -> Result<String> {
        Ok(format!("sudo.{}", self.target_user()?))
    }

    /// sudo's argv up to and including `--`; the boot command follows.
    ///
    /// # Errors
    /// A `StreamError` if `sudo_args` has an unsupported option.
    pub fn argv(&self) -> Result<Vec<OsString>> {
        let flags = parse_sudo_args(&self.sudo_args)?;
        let mut argv: Vec<OsString> = vec![self.sudo_path.clone(), "-p".into(), SUDO_PROMPT.into()];
        argv.extend(["-u".into(), self.target_user()?.into()]);
        let mut flag = |on: bool, f: &str| {
            if on {
                argv.push(f.into());
            }
        };
        flag(self.preserve_env || flags.preserve_env, "-E");
        flag(self.set_home || flags.set_home, "-H");
        flag(self.login || flags.login, "-i");
        if let Some(role) = self.selinux_role.clone().or(flags.role) {
            argv.extend(["-r".into(), role.into()]);
        }
        if let Some(kind) = self.selinux_type.clone().or(flags.kind) {
            argv.extend(["-t".into(), kind.into()]);
        }
        argv.push("--".into());
        Ok(argv)
    }
}

impl Bootstrapped for SudoOptions {
    /// On the hybrid transport, with our own prompt text (`-p`); errors of kind
    /// [`Password`](mitogen_core::StreamErrorKind::Password): "sudo password is incorrect",
    /// "sudo password is required"; a `StreamError` for `sudo_args` sudo would refuse.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(Launch {
            name: Some(self.default_name()?),
            prompts: Box::new(|| Box::new(SudoPrompts { password: PasswordState::new(self.password.clone(), "sudo") })),
            compress: false, // a command on this machine
            ..Launch::new(self.argv()?, Transport::Hybrid)
        })
    }
}

/// sudo's prompts and failures.
struct SudoPrompts {
    password: PasswordState,
}

/// Our `-p` prompt, as sudo prints it (the whole text ends with it) or as sudo-rs wraps it
/// (`[sudo: mitogen-sudo-prompt:] Password: `).
fn our_prompt(text: &str) -> bool {
    text.trim_end().ends_with(SUDO_PROMPT) || text.contains(&format!("[sudo: {SUDO_PROMPT}]"))
}

/// A prompt that is not ours but asks for a password: it names sudo or a password, in a few
/// languages, and waits after a colon (ASCII, or the full-width one of CJK locales).
fn other_prompt(text: &str) -> bool {
    let t = text.trim_end();
    let lower = t.to_lowercase();
    let waits = t.ends_with(':') || t.ends_with('：');
    let asks = [
        "[sudo",
        "password",
        "passwort",
        "mot de passe",
        "contraseña",
        "senha",
        "пароль",
        "密码",
        "密碼",
        "パスワード",
        "암호",
    ]
    .iter()
    .any(|w| lower.contains(w));
    waits && asks
}

impl Prompts for SudoPrompts {
    fn line(&mut self, line: &str) -> Result<()> {
        let lower = line.to_lowercase();
        if lower.contains("incorrect password attempt") || lower.contains("incorrect authentication attempt") {
            return Err(self.password.incorrect());
        }
        if lower.starts_with("sudo: a password is required")
            || lower.contains("a terminal is required to read the password")
        {
            return Err(self.password.required());
        }
        Ok(())
    }

    fn partial(&mut self, text: &str) -> Result<Option<Vec<u8>>> {
        if our_prompt(text) || other_prompt(text) {
            return self.password.prompt("sudo", text);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(argv: Vec<OsString>) -> Vec<String> {
        argv.into_iter().map(|w| w.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_argv_is_mitogens() {
        assert_eq!(words(SudoOptions::default().argv().unwrap()), ["sudo", "-p", SUDO_PROMPT, "-u", "root", "--"]);
        let all = SudoOptions {
            sudo_path: "/usr/bin/sudo".into(),
            preserve_env: true,
            set_home: true,
            login: true,
            selinux_role: Some("r".into()),
            selinux_type: Some("t".into()),
            password: Some("secret".into()),
            ..SudoOptions::new("bob")
        };
        let argv = words(all.argv().unwrap());
        assert_eq!(
            argv,
            ["/usr/bin/sudo", "-p", SUDO_PROMPT, "-u", "bob", "-E", "-H", "-i", "-r", "r", "-t", "t", "--"]
        );
        assert_eq!(all.default_name().unwrap(), "sudo.bob");
    }

    #[test]
    fn sudo_args_are_parsed_and_unsupported_ones_refused() {
        let parsed = SudoOptions {
            sudo_args: ["-EH", "-S", "-n", "--user=postgres", "-rrole", "--type", "ty", "--login"]
                .map(String::from)
                .to_vec(),
            ..SudoOptions::default()
        };
        assert_eq!(
            words(parsed.argv().unwrap()),
            ["sudo", "-p", SUDO_PROMPT, "-u", "postgres", "-E", "-H", "-i", "-r", "role", "-t", "ty", "--"]
        );
        // An explicit username wins over sudo_args.
        let explicit = SudoOptions { sudo_args: vec!["-u".into(), "x".into()], ..SudoOptions::new("y") };
        assert_eq!(explicit.target_user().unwrap(), "y");
        let with = |args: &[&str]| SudoOptions {
            sudo_args: args.iter().map(|s| s.to_string()).collect(),
            ..SudoOptions::default()
        };
        // As sudo (getopt) and Mitogen (optparse) read them: clusters, attached and next values,
        // long options and their unambiguous prefixes, `--`.
        for (args, user, home, env) in [
            (&["-Hu", "mitogen-other"][..], "mitogen-other", true, false),
            (&["-uother"], "other", false, false),
            (&["-EHuother"], "other", true, true),
            (&["--user=a", "--set-home"], "a", true, false),
            (&["--user", "b", "--pres"], "b", false, true),
            (&["-H", "--"], "root", true, false),
            (&["-u", "-H"], "-H", false, false),
        ] {
            let flags = parse_sudo_args(&with(args).sudo_args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(
                (flags.user.as_deref().unwrap_or("root"), flags.set_home, flags.preserve_env),
                (user, home, env),
                "{args:?}"
            );
        }
        for (bad, says) in [
            (&["-k"][..], "unsupported option \"-k\""),
            (&["-Hk"], "unsupported option \"-k\""),
            (&["--chroot=/"], "unsupported option \"--chroot\""),
            (&["-u"], "option -u needs a value"),
            (&["--user"], "option --user needs a value"),
            (&["--login=yes"], "option --login takes no value"),
            (&["--s"], "ambiguous option \"--s\" (--set-home, --stdin)"),
            (&["plain"], "unsupported arguments [\"plain\"]"),
            (&["--", "-H"], "unsupported arguments [\"-H\"]"),
        ] {
            let e = with(bad).argv().unwrap_err();
            assert!(e.is_stream() && e.to_string().contains(says), "{bad:?}: {e}");
        }
    }

    fn prompts(password: Option<&str>) -> SudoPrompts {
        SudoPrompts { password: PasswordState::new(password.map(Secret::from), "sudo") }
    }

    #[test]
    fn recorded_prompts_are_recognised() {
        // sudo 1.9 with -p; sudo-rs's wrapped form; the default prompt; a zh_CN-like localized
        // prompt with a full-width colon; a German PAM prompt.
        for text in [
            "mitogen-sudo-prompt:",
            "[sudo: mitogen-sudo-prompt:] Password: ",
            "[sudo] password for mitogen-user: ",
            "[sudo] mitogen-user 的密码：",
            "Passwort: ",
        ] {
            assert_eq!(prompts(Some("pw")).partial(text).unwrap(), Some(b"pw\n".to_vec()), "{text:?}");
        }
        for text in
            ["We trust you have received the usual lecture", "#1) Respect the privacy of others.", "Last login:"]
        {
            assert_eq!(prompts(Some("pw")).partial(text).unwrap(), None, "{text:?}");
        }
    }

    #[test]
    fn a_second_prompt_is_incorrect_and_none_given_is_required() {
        let mut p = prompts(Some("wrong"));
        assert!(p.partial("mitogen-sudo-prompt:").unwrap().is_some());
        p.line("Sorry, try again.").unwrap();
        let e = p.partial("mitogen-sudo-prompt:").unwrap_err();
        assert!(e.to_string().contains("sudo password is incorrect") && !e.to_string().contains("wrong"), "{e}");
        // sudo-rs: its retry line, then its prompt again.
        let mut p = prompts(Some("wrong"));
        assert!(p.partial("[sudo: mitogen-sudo-prompt:] Password: ").unwrap().is_some());
        p.line("sudo: Authentication failed, try again.").unwrap();
        assert!(p.partial("[sudo: mitogen-sudo-prompt:] Password: ").is_err());
        let e = prompts(None).partial("mitogen-sudo-prompt:").unwrap_err();
        assert!(e.to_string().contains("sudo password is required"), "{e}");
        assert!(prompts(None).line("sudo: a password is required").is_err());
        assert!(prompts(Some("x")).line("sudo: 3 incorrect password attempts").is_err());
    }
}
