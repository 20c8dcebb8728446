//! The documented exception classes, as Rust error types.
//!
//! Mitogen's `Error` is the base class of `CallError`, `ChannelError`, `LatchError`,
//! `StreamError` and `TimeoutError`. Here each class is its own struct, and [`Error`] is the enum
//! of all of them that every fallible function of the crate returns. Each converts into [`Error`]
//! with `?`, and [`Error::is_channel`] and friends tell the kinds apart without a `match`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A remote function failed: it returned an error or panicked (Mitogen `CallError`).
///
/// Carries the remote error's type name, its message and the remote backtrace, so the caller can
/// see what failed where. A `CallError` crosses the wire intact: a function in a child that
/// returns one, or a reply carrying one, re-raises it in the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    /// The remote error's type, e.g. `std::io::Error` or `panic`.
    pub type_name: String,
    /// The remote error's message.
    pub message: String,
    /// The remote backtrace, when one was captured; empty otherwise.
    pub traceback: String,
}

impl CallError {
    /// A `CallError` for an error of type `type_name` with `message` and no backtrace.
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError { type_name: type_name.into(), message: message.into(), traceback: String::new() }
    }

    /// A `CallError` describing `err`, named with its Rust type.
    pub fn from_error<E: std::error::Error + ?Sized>(err: &E) -> CallError {
        CallError::new(std::any::type_name::<E>(), err.to_string())
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call failed: {}: {}", self.type_name, self.message)?;
        if !self.traceback.is_empty() {
            write!(f, "\n{}", self.traceback)?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}

macro_rules! reason_error {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            reason: String,
        }

        impl $name {
            /// An error saying `reason`.
            pub fn new(reason: impl Into<String>) -> $name {
                $name { reason: reason.into() }
            }

            /// What failed, without the error's prefix.
            pub fn reason(&self) -> &str {
                &self.reason
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ": {}"), self.reason)
            }
        }

        impl std::error::Error for $name {}

        impl From<$name> for Error {
            fn from(e: $name) -> Error {
                Error::$name(e)
            }
        }
    };
}

reason_error!(
    /// A channel is dead: the remote end closed it, or communication with its context was lost
    /// (Mitogen `ChannelError`). The reason says which.
    ChannelError,
    "channel error"
);
reason_error!(
    /// A [`Latch`](crate::Latch) (or something built on one, such as a `Select`) was closed while
    /// a thread waited on it, or used after being closed (Mitogen `LatchError`).
    LatchError,
    "latch error"
);
reason_error!(
    /// A blocking operation did not complete before its deadline (Mitogen `TimeoutError`).
    TimeoutError,
    "timeout"
);
reason_error!(
    /// Misuse of an API that is none of the specific kinds: a handle registered twice, an unknown
    /// handle removed, a broker used after it exited (Mitogen's base `Error`).
    GeneralError,
    "error"
);

/// What kind of failure a [`StreamError`] is, for a caller that matches on it instead of
/// reading its text (Mitogen's `StreamError` subclasses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StreamErrorKind {
    /// A connection broke, a peer sent something that is not the protocol, a message could not
    /// be encoded or decoded, or a descriptor could not be made.
    Other,
    /// The child's output ended before its handshake (Mitogen `EofError`): it exited, or the
    /// command that was to start it failed. Holds the last lines it printed.
    Eof {
        /// The last lines the child printed, oldest first (at most 100).
        last_lines: Vec<String>,
    },
    /// The connection was cancelled because the broker began to shut down (Mitogen
    /// `CancelledError`).
    Cancelled,
    /// The child's command could not be started (Mitogen "Child start failed").
    ChildStart {
        /// The `errno` of the failed `exec` or `fork`.
        errno: i32,
        /// The command, shell-quoted.
        argv: String,
    },
    /// The two ends speak different protocol versions.
    ProtocolMismatch {
        /// This executable's protocol version.
        ours: u32,
        /// The peer's protocol version.
        theirs: u32,
    },
    /// A password was needed and none was given, or it was refused (Mitogen
    /// `ssh.PasswordError`, `sudo.PasswordError`, `su.PasswordError`, `doas.PasswordError`).
    Password,
    /// A host key was unknown or did not match (Mitogen `ssh.HostKeyError`).
    HostKey,
    /// The target's cached copy of the executable is not the one shipped (corrupt or
    /// replaced); the child removed it, so the next connect ships a fresh copy.
    CorruptExecutable {
        /// The sha256 shipped.
        expected: String,
        /// The sha256 the child found.
        actual: String,
    },
    /// No executable this program can ship fits the target (its machine, or its libc and
    /// version): the text names the target, what each known executable needs, and the cargo
    /// command that builds one that fits. Nothing was left on the target.
    NoExecutable {
        /// The target as stage 1 reported it, e.g. `Linux x86_64, glibc 2.31`.
        target: String,
    },
    /// The child is another program: its remote functions are not this program's (an
    /// executable registered or given is not this program built for the target).
    WrongProgram,
}

/// A stream failed (Mitogen `StreamError`): see its [`kind`](StreamError::kind). An underlying
/// operating-system error is its [`source`](std::error::Error::source); it does not cross
/// the wire (the text does).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamError {
    kind: StreamErrorKind,
    reason: String,
    #[serde(skip)]
    source: Option<Arc<std::io::Error>>,
}

impl StreamError {
    /// An error of kind [`StreamErrorKind::Other`] saying `reason`.
    pub fn new(reason: impl Into<String>) -> StreamError {
        StreamError::with_kind(StreamErrorKind::Other, reason)
    }

    /// An error of `kind` saying `reason`.
    pub fn with_kind(kind: StreamErrorKind, reason: impl Into<String>) -> StreamError {
        StreamError { kind, reason: reason.into(), source: None }
    }

    /// The same error, caused by `source`.
    pub fn caused_by(mut self, source: std::io::Error) -> StreamError {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &StreamErrorKind {
        &self.kind
    }

    /// What failed, without the error's prefix.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The operating-system error that caused this one, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.source.as_deref()
    }
}

impl PartialEq for StreamError {
    fn eq(&self, other: &StreamError) -> bool {
        (&self.kind, &self.reason) == (&other.kind, &other.reason)
    }
}

impl Eq for StreamError {}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream error: {}", self.reason)
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<StreamError> for Error {
    fn from(e: StreamError) -> Error {
        Error::StreamError(e)
    }
}

/// Any error of this crate (Mitogen's `Error` and its subclasses). It crosses the wire intact,
/// so an error raised in another context (a connect through `via=`) keeps its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    /// See [`CallError`].
    CallError(CallError),
    /// See [`ChannelError`].
    ChannelError(ChannelError),
    /// See [`LatchError`].
    LatchError(LatchError),
    /// See [`StreamError`].
    StreamError(StreamError),
    /// See [`TimeoutError`].
    TimeoutError(TimeoutError),
    /// See [`GeneralError`].
    GeneralError(GeneralError),
}

impl Error {
    /// A [`GeneralError`] saying `reason`.
    pub fn general(reason: impl Into<String>) -> Error {
        Error::GeneralError(GeneralError::new(reason))
    }

    /// A [`StreamError`] of kind [`Other`](StreamErrorKind::Other) saying `reason`.
    pub fn stream(reason: impl Into<String>) -> Error {
        Error::StreamError(StreamError::new(reason))
    }

    /// A [`StreamError`] of kind [`Other`](StreamErrorKind::Other): `what` failed with
    /// `source`, which stays the error's [`source`](std::error::Error::source).
    pub fn stream_io(what: impl fmt::Display, source: std::io::Error) -> Error {
        Error::StreamError(StreamError::new(format!("{what}: {source}")).caused_by(source))
    }

    /// A [`StreamError`] of `kind` saying `reason`.
    pub fn stream_kind(kind: StreamErrorKind, reason: impl Into<String>) -> Error {
        Error::StreamError(StreamError::with_kind(kind, reason))
    }

    /// The kind of a [`StreamError`]; `None` for other errors.
    pub fn stream_kind_of(&self) -> Option<&StreamErrorKind> {
        match self {
            Error::StreamError(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// A [`ChannelError`] saying `reason`.
    pub fn channel(reason: impl Into<String>) -> Error {
        Error::ChannelError(ChannelError::new(reason))
    }

    /// A [`TimeoutError`] saying `reason`.
    pub fn timeout(reason: impl Into<String>) -> Error {
        Error::TimeoutError(TimeoutError::new(reason))
    }

    /// The same error with `prefix: ` before its reason (before a [`CallError`]'s message),
    /// saying where it happened, as Mitogen's "error occurred on host ...".
    pub fn prefixed(self, prefix: &str) -> Error {
        let p = |reason: &str| format!("{prefix}: {reason}");
        match self {
            Error::CallError(e) => Error::CallError(CallError { message: p(&e.message), ..e }),
            Error::ChannelError(e) => Error::ChannelError(ChannelError::new(p(e.reason()))),
            Error::LatchError(e) => Error::LatchError(LatchError::new(p(e.reason()))),
            Error::StreamError(e) => Error::StreamError(StreamError { reason: p(&e.reason), ..e }),
            Error::TimeoutError(e) => Error::TimeoutError(TimeoutError::new(p(e.reason()))),
            Error::GeneralError(e) => Error::GeneralError(GeneralError::new(p(e.reason()))),
        }
    }

    /// The same error with `hint` after a [`StreamError`]'s reason (what a connection method
    /// knows usually went wrong, as Mitogen's `eof_error_hint`); other errors unchanged.
    pub fn suffixed(self, hint: &str) -> Error {
        match self {
            Error::StreamError(e) => Error::StreamError(StreamError { reason: format!("{}. {hint}", e.reason), ..e }),
            other => other,
        }
    }

    /// Whether this is a [`CallError`].
    pub fn is_call(&self) -> bool {
        matches!(self, Error::CallError(_))
    }

    /// Whether this is a [`ChannelError`].
    pub fn is_channel(&self) -> bool {
        matches!(self, Error::ChannelError(_))
    }

    /// Whether this is a [`LatchError`].
    pub fn is_latch(&self) -> bool {
        matches!(self, Error::LatchError(_))
    }

    /// Whether this is a [`StreamError`].
    pub fn is_stream(&self) -> bool {
        matches!(self, Error::StreamError(_))
    }

    /// Whether this is a [`TimeoutError`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimeoutError(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CallError(e) => e.fmt(f),
            Error::ChannelError(e) => e.fmt(f),
            Error::LatchError(e) => e.fmt(f),
            Error::StreamError(e) => e.fmt(f),
            Error::TimeoutError(e) => e.fmt(f),
            Error::GeneralError(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::StreamError(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        Error::CallError(e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_errors_carry_a_kind_and_their_io_source() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Error::stream_io("cannot open /x", io);
        assert_eq!(e.stream_kind_of(), Some(&StreamErrorKind::Other));
        let source = std::error::Error::source(&e).expect("the io::Error is the source");
        assert_eq!(source.downcast_ref::<std::io::Error>().unwrap().raw_os_error(), Some(libc::ENOENT));
        let e = Error::stream_kind(StreamErrorKind::Cancelled, "cancelled").prefixed("on host h");
        assert_eq!(e.stream_kind_of(), Some(&StreamErrorKind::Cancelled));
        assert_eq!(e.to_string(), "stream error: on host h: cancelled");
    }

    #[test]
    fn display_says_what_failed() {
        assert_eq!(Error::channel("sender closed").to_string(), "channel error: sender closed");
        assert_eq!(Error::timeout("no reply in 1s").to_string(), "timeout: no reply in 1s");
        let e = CallError::new("std::io::Error", "no such file");
        assert_eq!(e.to_string(), "call failed: std::io::Error: no such file");
        assert!(Error::from(e).is_call());
    }
}
