//! The setns method (Mitogen `mitogen.setns`): a context inside a container entered directly,
//! with no container tool in the data path. The container's leader process is found with the
//! engine's tool; then, between `fork` and `exec` of `/bin/sh` (a fresh single-threaded child:
//! `setns` into a mount namespace is refused in a process with threads), the child enters each
//! of its namespaces that differs from ours, takes its root directory as its own, becomes the
//! account (groups, gid, uid, from the container's `/etc/passwd` and `/etc/group`) with `HOME`,
//! `SHELL`, `LOGNAME`, `USER` and `PATH` set, and changes to its home. The boot command runs as
//! `sh -c '<boot>; exit $?'`, so the shell forks it into the container's PID namespace. Needs
//! root.

use std::ffi::OsString;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use mitogen_core::{sys, Error, Result};
use serde::{Deserialize, Serialize};

use crate::command::{Boot, Bootstrapped, Launch};
use crate::connect::Deadline;
use crate::process::Setup;
use crate::transport::Transport;

/// How the container's leader process is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetnsKind {
    /// `docker inspect --format={{.State.Pid}} <container>`.
    #[default]
    Docker,
    /// `lxc-info -n <container>` (its `PID:` line).
    Lxc,
    /// `lxc info <container>` (LXD; its `PID:` line).
    Lxd,
    /// `machinectl status <container>` (its `Leader:` line).
    Machinectl,
    /// `container` is the leader's pid itself (plain namespaces made with `unshare`; not in
    /// Mitogen).
    Pid,
}

/// The setns method's own options (the keywords of Mitogen's `Router.setns()`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetnsOptions {
    /// The container (its name, or for [`SetnsKind::Pid`] the leader's pid).
    pub container: String,
    /// The engine that runs it.
    pub kind: SetnsKind,
    /// The account inside; default `root`.
    pub username: String,
    /// The docker program; default `docker`.
    pub docker_path: OsString,
    /// LXD's client; default `lxc`.
    pub lxc_path: OsString,
    /// The lxc-info program; default `lxc-info`.
    pub lxc_info_path: OsString,
    /// The machinectl program; default `machinectl`.
    pub machinectl_path: OsString,
}

impl SetnsOptions {
    /// Options for `container` run by `kind`.
    pub fn new(container: impl Into<String>, kind: SetnsKind) -> SetnsOptions {
        SetnsOptions {
            container: container.into(),
            kind,
            username: "root".into(),
            docker_path: "docker".into(),
            lxc_path: "lxc".into(),
            lxc_info_path: "lxc-info".into(),
            machinectl_path: "machinectl".into(),
        }
    }

    /// The command that reports the leader's pid, and the label of the line it is on (`None`:
    /// the whole output is the pid).
    pub fn leader_query(&self) -> Option<(Vec<OsString>, Option<&'static str>)> {
        let c: OsString = self.container.clone().into();
        match self.kind {
            SetnsKind::Docker => {
                Some((vec![self.docker_path.clone(), "inspect".into(), "--format={{.State.Pid}}".into(), c], None))
            }
            SetnsKind::Lxc => Some((vec![self.lxc_info_path.clone(), "-n".into(), c], Some("pid:"))),
            SetnsKind::Lxd => Some((vec![self.lxc_path.clone(), "info".into(), c], Some("pid:"))),
            SetnsKind::Machinectl => Some((vec![self.machinectl_path.clone(), "status".into(), c], Some("leader:"))),
            SetnsKind::Pid => None,
        }
    }
}

/// Run `argv` and return its stdout, within `deadline`.
fn run_tool(argv: &[OsString], deadline: Instant) -> Result<String> {
    let shown = crate::process::shell_join(&argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>());
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::stream_io(format!("setns: cannot run {shown}"), e))?;
    let mut out = child.stdout.take().expect("piped");
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        use std::os::fd::AsFd;
        match sys::wait_readable(out.as_fd(), Some(deadline)) {
            Ok(true) => match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::timeout(format!("setns: {shown} did not answer in time")));
            }
        }
    }
    let mut err = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
    let status = child.wait().map_err(|e| Error::stream_io("wait", e))?;
    if !status.success() {
        return Err(Error::stream(format!("setns: {shown} failed ({status}): {}", err.trim())));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The leader pid in `output` (after `label`, case-insensitive, when there is one).
fn parse_leader(output: &str, label: Option<&str>) -> Option<i32> {
    let number = |s: &str| s.split_whitespace().next()?.parse::<i32>().ok().filter(|&p| p > 0);
    match label {
        None => number(output),
        Some(label) => output.lines().find_map(|l| {
            let t = l.trim_start();
            t.to_ascii_lowercase().starts_with(label).then(|| number(&t[label.len()..])).flatten()
        }),
    }
}

/// An account in a passwd file: `(uid, gid, home, shell)`.
fn passwd_entry(passwd: &str, user: &str) -> Option<(u32, u32, String, String)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == user)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].into(), f[6].into())))?
    })
}

/// The groups a group file lists `user` in, besides `gid`.
fn groups_of(group: &str, user: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[3].split(',').any(|m| m == user) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    groups
}

impl Bootstrapped for SetnsOptions {
    /// Asks the engine for the leader (within the connect's `deadline`), reads the account
    /// from the container's files, and enters its namespaces between `fork` and `exec`.
    /// Errors: a `StreamError` naming the container if it has no leader, no such account, or
    /// its namespaces cannot be opened.
    fn launch(&self, deadline: Deadline) -> Result<Launch<'_>> {
        launch(self, deadline)
    }
}

fn launch(o: &SetnsOptions, deadline: Deadline) -> Result<Launch<'_>> {
    let pid = match o.leader_query() {
        None => o.container.trim().parse().ok(),
        Some((argv, label)) => parse_leader(&run_tool(&argv, deadline.at)?, label),
    }
    .ok_or_else(|| Error::stream(format!("setns: no leader process found for container {:?}", o.container)))?;
    let root = format!("/proc/{pid}/root");
    let read = |file: &str| {
        std::fs::read_to_string(format!("{root}{file}"))
            .map_err(|e| Error::stream_io(format!("setns: cannot read {file} of container {:?}", o.container), e))
    };
    let (uid, gid, home, shell) = passwd_entry(&read("/etc/passwd")?, &o.username)
        .ok_or_else(|| Error::stream(format!("setns: no account {:?} in container {:?}", o.username, o.container)))?;
    let groups = groups_of(&read("/etc/group").unwrap_or_default(), &o.username, gid);
    let entry = sys::NamespaceEntry::open(pid, uid, gid, &groups, &home)
        .map_err(|e| Error::stream_io(format!("setns: cannot open the namespaces of pid {pid}"), e))?;
    let env = [
        ("HOME", home.as_str()),
        ("SHELL", shell.as_str()),
        ("LOGNAME", o.username.as_str()),
        ("USER", o.username.as_str()),
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
    .to_vec();
    Ok(Launch {
        boot: Boot::Forked,
        name: Some(format!("setns.{}", o.container)),
        setup: Setup { env: Some(env), enter: Some(Arc::new(entry)) },
        compress: false, // a command on this machine
        ..Launch::new(vec!["/bin/sh".into(), "-c".into()], Transport::Socketpair)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_are_read_from_each_tools_output() {
        assert_eq!(parse_leader("4242\n", None), Some(4242));
        assert_eq!(parse_leader("0\n", None), None, "a stopped docker container reports pid 0");
        let lxc_info = "Name:           mt-lxc1\nState:          RUNNING\nPID:            3117\nIP:    -\n";
        assert_eq!(parse_leader(lxc_info, Some("pid:")), Some(3117));
        let lxd = "Name: mt-lxd1\nStatus: RUNNING\nType: container\nPID: 777\nResources:\n  Processes: 1\n";
        assert_eq!(parse_leader(lxd, Some("pid:")), Some(777));
        let machinectl = "mt1(abc)\n           Since: Mon\n          Leader: 1234 (systemd)\n";
        assert_eq!(parse_leader(machinectl, Some("leader:")), Some(1234));
        let o = SetnsOptions::new("c", SetnsKind::Docker);
        let (argv, _) = o.leader_query().unwrap();
        assert_eq!(argv, ["docker", "inspect", "--format={{.State.Pid}}", "c"].map(OsString::from));
    }

    #[test]
    fn accounts_and_groups_come_from_the_containers_files() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nwww:x:33:33:www:/var/www:/usr/sbin/nologin\n";
        assert_eq!(passwd_entry(passwd, "www"), Some((33, 33, "/var/www".into(), "/usr/sbin/nologin".into())));
        assert_eq!(passwd_entry(passwd, "nobody"), None);
        assert_eq!(groups_of("adm:x:4:www,syslog\nwww:x:33:\nstaff:x:50:root\n", "www", 33), vec![33, 4]);
    }
}
