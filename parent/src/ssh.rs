//! The ssh method (Mitogen `mitogen.ssh`): a context on another host, through the system's `ssh`
//! binary, so the user's `~/.ssh/config`, agent, jump hosts and ControlMaster all apply.
//!
//! The argv is Mitogen's, in its order: `-o LogLevel ERROR` (it hides banners that could pass
//! for a password prompt) or `-v` up to three times, `-l`, `-p`, `IdentitiesOnly`, `-i`,
//! `Compression`, the keepalive options, `BatchMode yes` unless a PTY is needed, the host-key
//! options of [`CheckHostKeys`], the user's `ssh_args`, the host, and the boot command quoted
//! word by word for the remote shell. A PTY (the hybrid transport) is allocated only to type a
//! password or accept a host key; otherwise the data goes over a socket pair with stderr on a
//! pipe, as PTYs are scarce on a busy master.

use std::ffi::OsString;
use std::path::PathBuf;

use mitogen_core::{Error, Result, StreamErrorKind};
use serde::{Deserialize, Serialize};

use crate::command::{Boot, Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::prompt::{password_error, PasswordState, Prompts};
use crate::transport::Transport;
use mitogen_core::Secret;

/// What ssh does with a host key it does not know (Mitogen's `check_host_keys`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckHostKeys {
    /// Refuse unknown and changed keys (`StrictHostKeyChecking yes`): a
    /// [`HostKey`](StreamErrorKind::HostKey) error.
    #[default]
    Enforce,
    /// Answer ssh's question with `yes` and remember the key (`StrictHostKeyChecking ask`,
    /// through a PTY).
    Accept,
    /// Check nothing and remember nothing (`StrictHostKeyChecking no`, both known-hosts files
    /// `/dev/null`).
    Ignore,
}

/// The ssh method's own options (the keywords of Mitogen's `Router.ssh()`); the common ones are
/// in [`Options`](crate::Options). Serializable, so it works through `via=`.
///
/// ```
/// let ssh = mitogen_parent::SshOptions {
///     username: Some("deploy".into()),
///     port: Some(2222),
///     ..mitogen_parent::SshOptions::new("web1.example.com")
/// };
/// assert_eq!(ssh.default_name(), "ssh.web1.example.com:2222");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshOptions {
    /// The host to connect to, as ssh takes it (a name from `~/.ssh/config` works).
    pub hostname: String,
    /// The account on the host (`-l`); default: ssh's choice.
    pub username: Option<String>,
    /// The ssh program; default `ssh`, found on `PATH`.
    pub ssh_path: OsString,
    /// More words for ssh, after the method's own options and before the host.
    pub ssh_args: Vec<OsString>,
    /// The port (`-p`); default: ssh's choice.
    pub port: Option<u16>,
    /// What to do with an unknown host key; default [`CheckHostKeys::Enforce`].
    pub check_host_keys: CheckHostKeys,
    /// The password to type when ssh asks for one; with one, ssh runs on a PTY.
    pub password: Option<Secret>,
    /// The private key (`-i`).
    pub identity_file: Option<PathBuf>,
    /// Offer only `identity_file` or the password (`IdentitiesOnly yes`), not every key in the
    /// agent; default true (Mitogen's default).
    pub identities_only: bool,
    /// Compress the connection (`Compression yes`); default true (Mitogen's default).
    pub compression: bool,
    /// ssh's own debug output (`-v` .. `-vvv`), logged under the `mitogen::stderr` target; 0
    /// (the default) passes `LogLevel ERROR` instead.
    pub ssh_debug_level: u8,
    /// Send keepalives (`ServerAliveInterval`, `ServerAliveCountMax`); default true.
    pub keepalive_enabled: bool,
    /// Unanswered keepalives before ssh gives up; default 3.
    pub keepalive_count: u32,
    /// Seconds between keepalives; default 15.
    pub keepalive_interval: u32,
}

impl SshOptions {
    /// Options for `hostname` with Mitogen's defaults.
    pub fn new(hostname: impl Into<String>) -> SshOptions {
        SshOptions {
            hostname: hostname.into(),
            username: None,
            ssh_path: "ssh".into(),
            ssh_args: Vec::new(),
            port: None,
            check_host_keys: CheckHostKeys::Enforce,
            password: None,
            identity_file: None,
            identities_only: true,
            compression: true,
            ssh_debug_level: 0,
            keepalive_enabled: true,
            keepalive_count: 3,
            keepalive_interval: 15,
        }
    }

    /// The context's name unless [`Options::name`](crate::Options::name) says otherwise: `ssh.<host>`, with
    /// `:<port>` when the port is not 22.
    pub fn default_name(&self) -> String {
        match self.port {
            Some(port) if port != 22 => format!("ssh.{}:{port}", self.hostname),
            _ => format!("ssh.{}", self.hostname),
        }
    }

    /// Whether ssh must run on a PTY: only to type a password or accept a host key.
    fn requires_pty(&self) -> bool {
        self.password.is_some() || self.check_host_keys == CheckHostKeys::Accept
    }

    /// ssh's argv up to and including the host; the boot command follows.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![self.ssh_path.clone()];
        let mut push = |words: &[&str]| argv.extend(words.iter().map(OsString::from));
        if self.ssh_debug_level > 0 {
            push(&[&format!("-{}", "v".repeat(usize::from(self.ssh_debug_level.min(3))))]);
        } else {
            // Mitogen #307: a login banner could contain a password prompt's words.
            push(&["-o", "LogLevel ERROR"]);
        }
        if let Some(user) = &self.username {
            push(&["-l", user]);
        }
        if let Some(port) = self.port {
            push(&["-p", &port.to_string()]);
        }
        if self.identities_only && (self.identity_file.is_some() || self.password.is_some()) {
            push(&["-o", "IdentitiesOnly yes"]);
        }
        if let Some(file) = &self.identity_file {
            argv.push("-i".into());
            argv.push(file.clone().into_os_string());
        }
        let mut push = |words: &[&str]| argv.extend(words.iter().map(OsString::from));
        if self.compression {
            push(&["-o", "Compression yes"]);
        }
        if self.keepalive_enabled {
            push(&["-o", &format!("ServerAliveInterval {}", self.keepalive_interval)]);
            push(&["-o", &format!("ServerAliveCountMax {}", self.keepalive_count)]);
        }
        if !self.requires_pty() {
            push(&["-o", "BatchMode yes"]);
        }
        match self.check_host_keys {
            CheckHostKeys::Enforce => push(&["-o", "StrictHostKeyChecking yes"]),
            CheckHostKeys::Accept => push(&["-o", "StrictHostKeyChecking ask"]),
            CheckHostKeys::Ignore => push(&[
                "-o",
                "StrictHostKeyChecking no",
                "-o",
                "UserKnownHostsFile /dev/null",
                "-o",
                "GlobalKnownHostsFile /dev/null",
            ]),
        }
        argv.extend(self.ssh_args.iter().cloned());
        argv.push(self.hostname.clone().into());
        argv
    }
}

impl Bootstrapped for SshOptions {
    /// The boot command quoted word by word for the remote shell; a PTY only to type a
    /// password or accept a host key. Errors of kind
    /// [`Password`](mitogen_core::StreamErrorKind::Password) and
    /// [`HostKey`](mitogen_core::StreamErrorKind::HostKey) with Mitogen's texts.
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        let transport = if self.requires_pty() { Transport::Hybrid } else { Transport::Socketpair };
        Ok(Launch {
            boot: Boot::Quoted,
            name: Some(self.default_name()),
            prompts: Box::new(|| Box::new(SshPrompts::new(self))),
            ..Launch::new(self.argv(), transport)
        })
    }
}

const PASSWORD_INCORRECT: &str = "SSH password is incorrect";
const PASSWORD_REQUIRED: &str = "SSH password was requested, but none specified";
const AUTH_INCORRECT: &str = "SSH authentication is incorrect";
const HOSTKEY_FAILED: &str = "Host key checking is enabled, and SSH reported an unrecognized or mismatching host key.";
const HOSTKEY_CONFIG: &str = "SSH requested permission to accept unknown host key, but check_host_keys is not \
     Accept. This is likely due to ssh_args conflicting with check_host_keys. Please correct your configuration.";

/// ssh's prompts and failures (Mitogen `ssh.SetupProtocol`).
struct SshPrompts {
    password: PasswordState,
    accept: bool,
}

impl SshPrompts {
    fn new(ssh: &SshOptions) -> SshPrompts {
        let (incorrect, required) = (PASSWORD_INCORRECT.to_owned(), PASSWORD_REQUIRED.to_owned());
        SshPrompts {
            password: PasswordState::with_texts(ssh.password.clone(), incorrect, required),
            accept: ssh.check_host_keys == CheckHostKeys::Accept,
        }
    }
}

fn host_key_error(text: &str) -> Error {
    Error::stream_kind(StreamErrorKind::HostKey, text)
}

/// A line that starts with `Permission denied`, or with `user@host: Permission denied` (OpenSSH
/// 7.5 on): ssh's refusal, not a shell's `bash: x: Permission denied`.
fn permission_denied(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let rest = match lower.split_once('@') {
        Some((user, rest)) if !user.is_empty() && !user.contains(": ") => {
            rest.split_once(": ").filter(|(host, _)| !host.is_empty() && !host.contains(':')).map_or("", |(_, r)| r)
        }
        _ => "",
    };
    lower.starts_with("permission denied") || rest.starts_with("permission denied")
}

/// ssh's question about an unknown host key: `(yes/no)?` or, from OpenSSH 8.0,
/// `(yes/no/[fingerprint])?`.
fn host_key_question(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("are you sure you want to continue connecting (yes/no")
}

/// A password prompt: it mentions a password and waits after a colon.
fn password_prompt(text: &str) -> bool {
    text.to_ascii_lowercase().contains("password") && text.trim_end().ends_with(':')
}

impl Prompts for SshPrompts {
    fn line(&mut self, line: &str) -> Result<()> {
        if line.to_ascii_lowercase().contains("host key verification failed.") {
            return Err(host_key_error(HOSTKEY_FAILED));
        }
        if permission_denied(line) {
            return Err(if self.password.sent() {
                self.password.incorrect()
            } else if !self.password.given() && line.to_ascii_lowercase().contains("password") {
                self.password.required()
            } else {
                password_error(AUTH_INCORRECT)
            });
        }
        Ok(())
    }

    fn partial(&mut self, text: &str) -> Result<Option<Vec<u8>>> {
        if host_key_question(text) {
            return match self.accept {
                true => {
                    log::debug!("ssh: accepting the host key");
                    Ok(Some(b"yes\n".to_vec()))
                }
                false => Err(host_key_error(HOSTKEY_CONFIG)),
            };
        }
        if password_prompt(text) {
            return self.password.prompt("ssh", text);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(argv: &[OsString]) -> Vec<String> {
        argv.iter().map(|w| w.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_default_argv_is_mitogens() {
        assert_eq!(
            words(&SshOptions::new("h").argv()),
            [
                "ssh",
                "-o",
                "LogLevel ERROR",
                "-o",
                "Compression yes",
                "-o",
                "ServerAliveInterval 15",
                "-o",
                "ServerAliveCountMax 3",
                "-o",
                "BatchMode yes",
                "-o",
                "StrictHostKeyChecking yes",
                "h"
            ]
        );
    }

    #[test]
    fn every_keyword_lands_in_mitogens_order() {
        let ssh = SshOptions {
            username: Some("u".into()),
            ssh_path: "/opt/ssh".into(),
            ssh_args: vec!["-F".into(), "cfg".into()],
            port: Some(2222),
            check_host_keys: CheckHostKeys::Ignore,
            identity_file: Some("/k".into()),
            compression: false,
            ssh_debug_level: 5,
            keepalive_count: 7,
            keepalive_interval: 9,
            ..SshOptions::new("h")
        };
        assert_eq!(
            words(&ssh.argv()),
            [
                "/opt/ssh",
                "-vvv",
                "-l",
                "u",
                "-p",
                "2222",
                "-o",
                "IdentitiesOnly yes",
                "-i",
                "/k",
                "-o",
                "ServerAliveInterval 9",
                "-o",
                "ServerAliveCountMax 7",
                "-o",
                "BatchMode yes",
                "-o",
                "StrictHostKeyChecking no",
                "-o",
                "UserKnownHostsFile /dev/null",
                "-o",
                "GlobalKnownHostsFile /dev/null",
                "-F",
                "cfg",
                "h"
            ]
        );
    }

    #[test]
    fn a_password_or_accept_needs_a_pty_and_drops_batch_mode() {
        let pw = SshOptions { password: Some("pw".into()), keepalive_enabled: false, ..SshOptions::new("h") };
        let argv = words(&pw.argv());
        assert!(pw.requires_pty());
        assert!(!argv.contains(&"BatchMode yes".to_owned()));
        assert!(argv.contains(&"IdentitiesOnly yes".to_owned()), "a password implies IdentitiesOnly: {argv:?}");
        assert!(!argv.iter().any(|w| w.contains("pw")), "the password is never in argv: {argv:?}");
        assert!(!argv.iter().any(|w| w.starts_with("ServerAlive")));
        let accept = SshOptions { check_host_keys: CheckHostKeys::Accept, ..SshOptions::new("h") };
        assert!(accept.requires_pty());
        assert!(words(&accept.argv()).contains(&"StrictHostKeyChecking ask".to_owned()));
        let only = SshOptions { identities_only: false, identity_file: Some("/k".into()), ..SshOptions::new("h") };
        assert!(!words(&only.argv()).contains(&"IdentitiesOnly yes".to_owned()));
    }

    #[test]
    fn names_carry_the_port_unless_it_is_22() {
        assert_eq!(SshOptions::new("h").default_name(), "ssh.h");
        assert_eq!(SshOptions { port: Some(22), ..SshOptions::new("h") }.default_name(), "ssh.h");
        assert_eq!(SshOptions { port: Some(2200), ..SshOptions::new("h") }.default_name(), "ssh.h:2200");
    }

    #[test]
    fn only_a_line_that_starts_with_permission_denied_is_refusal() {
        assert!(permission_denied("Permission denied (publickey,password)."));
        assert!(permission_denied("mitogen-user@127.0.0.1: Permission denied (publickey,password)."));
        assert!(permission_denied("user@host: permission denied (publickey)"));
        assert!(!permission_denied("bash: /etc/shadow: Permission denied"));
        assert!(!permission_denied("sh: 1: cannot open x: Permission denied"));
        assert!(!permission_denied("the login said: Permission denied"));
    }

    fn kind(e: Error) -> (StreamErrorKind, String) {
        let text = e.to_string();
        (e.stream_kind_of().cloned().expect("a StreamError"), text)
    }

    #[test]
    fn prompts_type_the_password_once_and_a_second_prompt_is_incorrect() {
        let mut p = SshPrompts::new(&SshOptions { password: Some("s3cret".into()), ..SshOptions::new("h") });
        assert_eq!(p.partial("u@h's password:").unwrap(), Some(b"s3cret\n".to_vec()));
        p.line("Permission denied, please try again.").unwrap_err();
        let (k, text) = kind(p.partial("u@h's password: ").unwrap_err());
        assert_eq!(k, StreamErrorKind::Password);
        assert!(text.contains(PASSWORD_INCORRECT) && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn failures_are_named_as_mitogen_names_them() {
        let mut none = SshPrompts::new(&SshOptions::new("h"));
        assert!(kind(none.partial("u@h's password: ").unwrap_err()).1.contains(PASSWORD_REQUIRED));
        assert!(kind(none.line("u@h: Permission denied (publickey,password).").unwrap_err())
            .1
            .contains(PASSWORD_REQUIRED));
        assert!(kind(none.line("u@h: Permission denied (publickey).").unwrap_err()).1.contains(AUTH_INCORRECT));
        assert_eq!(kind(none.line("Host key verification failed.").unwrap_err()).0, StreamErrorKind::HostKey);
        let question = "Are you sure you want to continue connecting (yes/no/[fingerprint])? ";
        assert_eq!(kind(none.partial(question).unwrap_err()).0, StreamErrorKind::HostKey);
        let mut accept =
            SshPrompts::new(&SshOptions { check_host_keys: CheckHostKeys::Accept, ..SshOptions::new("h") });
        assert_eq!(accept.partial(question).unwrap(), Some(b"yes\n".to_vec()));
        assert_eq!(
            accept.partial("Are you sure you want to continue connecting (yes/no)? ").unwrap(),
            Some(b"yes\n".to_vec())
        );
        assert_eq!(accept.partial("Last login: today").unwrap(), None);
        accept.line("debug1: Reading configuration data").unwrap();
    }
}
