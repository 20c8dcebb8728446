//! What a child learns from its parent before any user code runs, and the handshake.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::sys;
use crate::wire::HEADER_LEN;

/// `argv[1]` of a process started as a child. Checked before `main` (see [`init`](crate::init)).
pub const CHILD_MARKER: &str = "--mitogen-child";

/// Version of the bootstrap and framing protocol, exchanged in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// This library's version (Mitogen `mitogen.__version__`), sent in the handshake and named in a
/// protocol mismatch.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a child learns from its parent before any user code runs: sent as the first
/// frame on the new stream (Mitogen's bootstrap `config` dictionary).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildConfig {
    /// The child's context id.
    pub context_id: u32,
    /// Its parents' ids, nearest first.
    pub parent_ids: Vec<u32>,
    /// The context's name, for log lines and process titles.
    pub name: String,
    /// The process title suffix: the child shows as `mitogen:<remote_name>`.
    pub remote_name: String,
    /// Most verbose level of the records this child forwards (`log::LevelFilter as usize`): its
    /// master's level for `mitogen::ctx::<name>`, the target the master logs them under.
    pub log_level: usize,
    /// The master's levels for its children's records, `(target prefix, log::LevelFilter as
    /// usize)`, longest prefix winning, so this child gives its own children the levels the
    /// master would (see [`child_log_level`](crate::child_log_level)).
    #[serde(default)]
    pub log_levels: Vec<(String, usize)>,
    /// Whether debug logging was asked for (Mitogen `debug`).
    pub debug: bool,
    /// Whether profiling was asked for (Mitogen `profiling`).
    pub profiling: bool,
    /// Whether the child's router refuses sibling traffic (Mitogen `unidirectional`).
    pub unidirectional: bool,
    /// The largest message the child accepts.
    pub max_message_size: u64,
    /// Handle in the parent the child sends its [`Hello`] to.
    pub handshake_handle: u32,
    /// The parent's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The sha256 of the executable the parent shipped, for a bootstrapped child to check its
    /// own against (and delete it if they differ: a corrupt or replaced cache entry).
    #[serde(default)]
    pub expected_sha256: Option<String>,
}

/// The child's side of the handshake, sent to the parent once its router is up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The child's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The child's process id.
    pub pid: u32,
    /// The id the child took from its config.
    pub context_id: u32,
    /// The sha256 of the child's executable, when its config asked for it (a bootstrapped
    /// child checks that the copy it runs from is the one shipped).
    #[serde(default)]
    pub exe_sha256: Option<String>,
    /// The child's [`VERSION`].
    #[serde(default)]
    pub version: String,
    /// The child's [`program_id`](crate::program_id): a parent refuses a child that is
    /// another program.
    #[serde(default)]
    pub program_id: String,
}

/// The sha256 (hex) of `data`: [`executable_digest`] of bytes already read.
pub fn bytes_digest(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The size and sha256 (hex) of the file at `path`: how a bootstrapped executable is named in a
/// target's cache, and how a child checks the copy it runs from.
///
/// # Errors
/// If the file cannot be read.
pub fn executable_digest(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Read exactly `buf.len()` bytes from `fd`, waiting when it would block.
fn read_exact(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sys::wait_readable(fd, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read the first frame the parent sends: the child's [`ChildConfig`].
///
/// # Errors
/// [`StreamError`](crate::StreamError) if the stream ends or the frame is not a config.
pub fn read_config(fd: std::os::fd::BorrowedFd<'_>) -> Result<ChildConfig> {
    let fail = |e: std::io::Error| Error::stream_io("cannot read child config", e);
    let mut header = [0u8; HEADER_LEN];
    read_exact(fd, &mut header).map_err(fail)?;
    let (mut msg, len) = Message::parse_header(&header)?;
    if len > 1 << 20 {
        return Err(Error::stream(format!("child config frame of {len} bytes is implausible")));
    }
    msg.data = vec![0; len];
    read_exact(fd, &mut msg.data).map_err(fail)?;
    let config: ChildConfig = msg.unpickle()?;
    if config.protocol_version != PROTOCOL_VERSION {
        let kind = crate::StreamErrorKind::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: config.protocol_version };
        return Err(Error::stream_kind(
            kind,
            format!(
                "parent speaks protocol version {}, this executable speaks {PROTOCOL_VERSION}",
                config.protocol_version
            ),
        ));
    }
    Ok(config)
}
