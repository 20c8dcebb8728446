//! The messaging core of Mitogen for Rust (Python's `mitogen.core`).
//!
//! Everything here works inside one process: the [`Latch`] that user threads sleep on, the
//! [`Broker`] thread that owns the poller, the [`Router`] that delivers [`Message`]s to handlers
//! or forwards them along [`Stream`]s, and the [`Receiver`] / [`Sender`] / [`Channel`] endpoints.
//! The [`guide`] explains how the pieces fit together.
//!
//! The modules read bottom up, each using only those above it in this list:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | OS | `sys`, `sync` | system calls (on `nix`), fork-safe locks |
//! | values | `error`, `globals`, `lines`, `blob` | errors, this process's identity, line splitting |
//! | wire | [`wire`] | frame headers, the frame decoder, MessagePack encodings |
//! | waiting | `latch`, `side` | [`Latch`] (the self-pipe trick), one direction of a descriptor |
//! | polling | `broker` | the [`Broker`] thread over any [`Source`] |
//! | messaging | `message`, `router`, `stream`, `receiver`, `context` | [`Message`], [`Router`], [`Stream`], [`Receiver`], [`Context`]: one layer, since the documented API ties them together (a message knows the router it came through, a router forwards along streams, a stream hands frames to its router) |
//! | child | `child`, `remote`, `atfork` | a process as a context: [`ExternalContext`], the dispatch loop, remote functions, fork preparation |
//!
//! ```
//! use std::time::Duration;
//! use mitogen_core::{Broker, Receiver, Router};
//!
//! let broker = Broker::new()?;
//! let router = Router::new(&broker);
//! let recv = Receiver::new(&router)?;
//! let sender = recv.to_sender();
//! sender.send(&("disk usage", 42u64))?;
//! let (what, n): (String, u64) = recv.get_data_timeout(Duration::from_secs(5))?;
//! assert_eq!((what.as_str(), n), ("disk usage", 42));
//! sender.close();
//! assert!(recv.get_timeout(Duration::from_secs(5)).unwrap_err().is_channel());
//! broker.shutdown();
//! broker.join();
//! # Ok::<(), mitogen_core::Error>(())
//! ```
#![deny(missing_docs)]

mod atfork;
mod blob;
mod broker;
mod child;
mod context;
mod error;
pub mod globals;
pub mod guide;
mod latch;
mod lines;
mod message;
pub mod profiling;
mod receiver;
mod remote;
mod router;
mod side;
mod stream;
mod sync;
#[doc(hidden)]
pub mod sys;
pub mod wire;

pub use blob::{Blob, Secret};
pub use broker::{Broker, BrokerOptions, Source, TimerHandle};
pub use child::{ExternalContext, CTX_TARGET, IO_TARGET, PROTOCOL_VERSION, VERSION};
pub use context::Context;
pub use error::{
    CallError, ChannelError, Error, GeneralError, LatchError, Result, StreamError, StreamErrorKind, TimeoutError,
};
pub use globals::Identity;
pub use latch::{Latch, LatchNotify};
pub use lines::LineSplitter;
pub use message::{Message, Payload};
pub use receiver::{Channel, Iter, Notify, Receiver, Sender};
pub use remote::{RemoteFn, Returns};
pub use router::{has_parent_authority, HandlerOptions, Policy, Router};
pub use side::Side;
pub use stream::{Stream, StreamStats, CHUNK_SIZE};
pub use wire::{
    ADD_ROUTE, ALLOCATE_ID, CALL_FUNCTION, CALL_SERVICE, DEFAULT_MAX_MESSAGE_SIZE, DEL_ROUTE, DETACHING,
    FIRST_DYNAMIC_HANDLE, FORWARD_LOG, FORWARD_MODULE, GET_MODULE, HEADER_LEN, IS_DEAD, LOAD_MODULE, MAGIC, SHUTDOWN,
};

// The plumbing the workspace's crates share (the child's start, the fork preparation, log
// forwarding, call encoding, frames): public for them, not part of the library's API.
#[doc(hidden)]
pub use atfork::{prepare_fork, ForkGuard};
#[doc(hidden)]
pub use broker::panic_message;
#[doc(hidden)]
pub use child::{
    bytes_digest, child_log_level, debug_tree, enable_master_debug_log, executable_digest, forget_chain, format_record,
    install_library_logger, log_forwarded, open_debug_log, read_config, serve, set_debug_tree, set_io_logging,
    ChildConfig, Hello, LogRecord, CHILD_MARKER,
};
#[doc(hidden)]
pub use remote::{encode_call, encode_call_by_path, program_id};
#[doc(hidden)]
pub use side::io_op;
#[doc(hidden)]
pub use sync::{Mutex, MutexGuard};
#[doc(hidden)]
pub use wire::{decode_frames, encode};

/// Create a connected pair of close-on-exec, non-blocking `AF_UNIX` stream sockets, as used to
/// join two routers (or a parent and a local child).
///
/// # Errors
/// [`StreamError`] if the sockets cannot be created.
pub fn socketpair() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    sys::socketpair(true).map_err(|e| Error::stream_io("cannot create socketpair", e))
}

/// Create a close-on-exec, non-blocking pipe `(read, write)`.
///
/// # Errors
/// [`StreamError`] if the pipe cannot be created.
pub fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    sys::pipe(true).map_err(|e| Error::stream_io("cannot create pipe", e))
}

/// Enter child mode if this process was started as a child, else return at once.
///
/// Call it first in `main` (Mitogen's bootstrap takes over the interpreter the same way). A
/// constructor run by the loader before `main` already does this in every binary that links
/// the library, including test binaries built by `cargo test`, so `init` is a no-op there; it is
/// kept as the documented, explicit entry point.
pub fn init() {
    if std::env::args_os().nth(1).is_some_and(|a| a == CHILD_MARKER) {
        child::run_exec_child();
    }
}

#[doc(hidden)]
pub mod __private {
    pub use crate::remote::{invoke_remote, name_of, Invoke, RemoteEntry, REMOTE_FUNCTIONS};
    pub use linkme;

    /// Split `data` as a child splits a `CALL_FUNCTION` request: `(chain id, path, argument
    /// bytes)`. For fuzzing the decoder of call requests.
    pub fn split_call_request(data: &[u8]) -> crate::Result<(Option<String>, String, &[u8])> {
        crate::remote::CallRequest::decode(data).map(|r| (r.chain_id, r.path, r.args))
    }
}
