//! Mitogen for Rust: a program starts copies of itself as child contexts and calls its own
//! functions in them.
//!
//! What a program calls is at the root: [`Router`] and its [`Context`]s, every method's options
//! ([`SshOptions`], [`SudoOptions`], ...), [`Receiver`], [`Sender`], [`Select`], the errors,
//! [`remote!`] and [`main`]. The workspace crates are here too, under the module paths Python's
//! Mitogen documents, internals included: [`core`] (`mitogen.core`), [`select`]
//! (`mitogen.select`), [`parent`] (`mitogen.parent`), [`master`] (`mitogen.master`) and
//! [`utils`] (`mitogen.utils`); `mitogen::Router` is `mitogen::master::Router`.
//!
//! # The rule for binaries
//!
//! A child is a copy of the parent's own executable started with a marker argument. A constructor
//! that the loader runs before `main` turns such a process into a child in every binary linking
//! this crate, test binaries built by `cargo test` included; call [`init`] (or use [`main`]) as the
//! first line of `main` anyway, to say so. Functions called remotely must be marked with
//! [`remote!`].
//!
//! ```no_run
//! fn hostname() -> String {
//!     std::fs::read_to_string("/etc/hostname").unwrap_or_default()
//! }
//! mitogen::remote!(hostname);
//!
//! fn main() -> Result<(), mitogen::Error> {
//!     mitogen::main(|router| {
//!         let child = router.local(Default::default())?;
//!         println!("child says {}", child.call(hostname, ())?);
//!         Ok(())
//!     })
//! }
//! ```
#![deny(missing_docs)]

// The layers, under Mitogen's module names: everything each documents, the internals
// (brokers, streams, sides, the wire constants) included.
pub use mitogen_core as core;
pub use mitogen_master as master;
pub use mitogen_parent as parent;
pub use mitogen_select as select;
pub use mitogen_utils as utils;

mod alloc;
/// Merging and summarising the profiles a tree writes (Mitogen `mitogen.profiler`); the
/// `mitogen-profiler` program is its command line.
pub use mitogen_utils::profiler;

// What a program calls, at the root: the router and its contexts, every method's options,
// messaging, select, the errors, and the entry points.
pub use mitogen_core::globals::{context_id, is_master, parent_id, parent_ids};
pub use mitogen_core::{
    init, remote, returns, Blob, CallError, Channel, ChannelError, Error, ExternalContext, Latch, LatchError, Message,
    Receiver, Secret, Sender, StreamError, StreamErrorKind, TimeoutError,
};
pub use mitogen_master::{
    BuildahOptions, CallChain, CheckHostKeys, CommandSpec, Context, DoasOptions, DockerOptions, ForkOptions,
    JailOptions, KubectlOptions, LxcOptions, LxdOptions, Method, Options, PodmanOptions, Router, SetnsKind,
    SetnsOptions, SshOptions, SuOptions, SudoOptions,
};
pub use mitogen_select::{Select, Selectable};
pub use mitogen_utils::{log_to_file, run_with_router, with_router};

/// Run `func` with a master router, after entering child mode if this process is a child
/// (Mitogen `mitogen.main`): [`init`], then [`run_with_router`], which
/// shuts the broker down and joins it however `func` ends, panics included.
///
/// # Errors
/// If the broker cannot start, or what `func` returns.
pub fn main<T>(func: impl FnOnce(&master::Router) -> Result<T, Error>) -> Result<T, Error> {
    init();
    utils::run_with_router(func)
}

/// What [`main_with`] sets up before the router (the arguments of Mitogen's
/// `@mitogen.main(log_level='INFO', profiling=False)`).
#[derive(Clone, Debug, Default)]
pub struct MainOptions {
    /// Log to standard error from this level ([`utils::log_to_file`]; `MITOGEN_LOG_LEVEL`
    /// overrides it); `None` leaves logging to the program.
    pub log_level: Option<log::LevelFilter>,
    /// Profile this process and every context of its tree
    /// ([`Router::enable_profiling`](master::Router::enable_profiling); `MITOGEN_PROFILING`
    /// does the same).
    pub profiling: bool,
}

/// [`main`] with logging and profiling set up first, as Mitogen's
/// `@mitogen.main(log_level=, profiling=)` does.
///
/// ```no_run
/// let options = mitogen::MainOptions { log_level: Some(log::LevelFilter::Info), profiling: true };
/// mitogen::main_with(options, |router| {
///     router.local(Default::default())?.shutdown(true)?;
///     Ok(())
/// })?;
/// # Ok::<(), mitogen::Error>(())
/// ```
///
/// # Errors
/// As [`main`]; a `GeneralError` if a `log_level` is given and a logger of the program's own
/// is already installed, or profiling cannot start.
pub fn main_with<T>(options: MainOptions, func: impl FnOnce(&master::Router) -> Result<T, Error>) -> Result<T, Error> {
    init();
    if let Some(level) = options.log_level {
        utils::log_to_file(None, false, level).map_err(|e| Error::general(format!("log_to_file: {e}")))?;
    }
    utils::run_with_router(|router| {
        if options.profiling {
            router.enable_profiling()?;
        }
        func(router)
    })
}

/// The README's examples, compiled as doc tests so they cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
