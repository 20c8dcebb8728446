//! How a started command's stdio is wired to the parent (Mitogen `create_child`,
//! `tty_create_child`, `hybrid_tty_create_child`): a closed set, so an enum.
//!
//! | transport | stdin / stdout | stderr | controlling terminal |
//! |---|---|---|---|
//! | [`Socketpair`](Transport::Socketpair) | one socket | a pipe | none |
//! | [`Pipes`](Transport::Pipes) | two pipes | a pipe | none |
//! | [`Merged`](Transport::Merged) | one socket | the same socket | none |
//! | [`Pty`](Transport::Pty) | the PTY (raw mode) | the PTY | the PTY |
//! | [`Hybrid`](Transport::Hybrid) | one socket | the PTY (echo off) | the PTY |
//!
//! With a PTY the child starts a new session and the PTY becomes its controlling terminal, so
//! `/dev/tty` works for sudo, su and ssh; the parent keeps the master open after the bootstrap
//! and logs what arrives on it (closing it would hang up the child). Between `fork` and `exec`
//! only `setsid` and `ioctl(TIOCSCTTY)` run (std's `Command` does the rest: `dup2` of prepared
//! descriptors, `execve`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;

use mitogen_core::{sys, Error, Result};
use serde::{Deserialize, Serialize};

use crate::process::{ChildProcess, Setup, Stdio3};

/// How the command's stdin, stdout and stderr reach the parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// stdin and stdout on one socket pair, stderr on a pipe: the default, and the cheapest.
    #[default]
    Socketpair,
    /// stdin and stdout on two pipes (where a tool refuses a socket), stderr on a pipe.
    Pipes,
    /// stdin, stdout and stderr on one socket pair: for container tools that would otherwise
    /// put a terminal of their own in between.
    Merged,
    /// Everything on a PTY that is the child's controlling terminal, in raw mode (`su` reads
    /// its password from stdin, so the data must share the terminal).
    Pty,
    /// Data on a socket pair; stderr and the controlling terminal on a PTY (sudo, ssh and doas
    /// ask for passwords on `/dev/tty`).
    Hybrid,
}

/// A command started with a transport: the process, the parent's ends of its protocol channel
/// (read, write), and what carries its stderr and prompts (the PTY master for PTY transports).
pub(crate) struct Started {
    pub(crate) proc: ChildProcess,
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    pub(crate) stderr: Option<OwnedFd>,
}

fn pty() -> Result<(OwnedFd, OwnedFd)> {
    sys::openpty(false).map_err(pty_error)
}

fn pty_error(e: std::io::Error) -> Error {
    // ENOSPC, EAGAIN, ENXIO, ENOENT: Mitogen's "maximum number of PTYs" case.
    Error::stream_io("failed to create a PTY (the maximum number of PTYs may have been reached)", e)
}

impl Transport {
    /// Start `argv` wired as this transport says.
    pub(crate) fn start(self, argv: &[OsString], setup: &Setup) -> Result<Started> {
        let io = |what: &'static str| move |e| Error::stream_io(what, e);
        match self {
            Transport::Socketpair | Transport::Merged => {
                let (ours, theirs) = sys::socketpair(false).map_err(io("socketpair"))?;
                let (stderr, err_w) = if self == Transport::Merged {
                    (None, theirs.try_clone().map_err(io("dup"))?)
                } else {
                    let (r, w) = sys::pipe(false).map_err(io("pipe"))?;
                    (Some(r), w)
                };
                let out = theirs.try_clone().map_err(io("dup"))?;
                let proc =
                    ChildProcess::spawn(argv, None, Stdio3 { stdin: theirs, stdout: out, stderr: err_w }, None, setup)?;
                let write = ours.try_clone().map_err(io("dup"))?;
                Ok(Started { proc, read: ours, write, stderr })
            }
            Transport::Pipes => {
                let (in_r, in_w) = sys::pipe(false).map_err(io("pipe"))?;
                let (out_r, out_w) = sys::pipe(false).map_err(io("pipe"))?;
                let (err_r, err_w) = sys::pipe(false).map_err(io("pipe"))?;
                let proc =
                    ChildProcess::spawn(argv, None, Stdio3 { stdin: in_r, stdout: out_w, stderr: err_w }, None, setup)?;
                Ok(Started { proc, read: out_r, write: in_w, stderr: Some(err_r) })
            }
            Transport::Pty => {
                let (master, slave) = sys::openpty(true).map_err(pty_error)?;
                let (s1, s2) = (slave.try_clone().map_err(io("dup"))?, slave.try_clone().map_err(io("dup"))?);
                let proc =
                    ChildProcess::spawn(argv, None, Stdio3 { stdin: slave, stdout: s1, stderr: s2 }, Some(0), setup)?;
                let write = master.try_clone().map_err(io("dup"))?;
                Ok(Started { proc, read: master, write, stderr: None })
            }
            Transport::Hybrid => {
                let (ours, theirs) = sys::socketpair(false).map_err(io("socketpair"))?;
                let (master, slave) = pty()?;
                let out = theirs.try_clone().map_err(io("dup"))?;
                let proc = ChildProcess::spawn(
                    argv,
                    None,
                    Stdio3 { stdin: theirs, stdout: out, stderr: slave },
                    Some(2),
                    setup,
                )?;
                let write = ours.try_clone().map_err(io("dup"))?;
                Ok(Started { proc, read: ours, write, stderr: Some(master) })
            }
        }
    }
}
