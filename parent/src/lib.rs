//! Creating and talking to child contexts (Python's `mitogen.parent`, `mitogen.fork` and the
//! connection methods).
//!
//! A parent starts a child, sends it its [`ChildConfig`](mitogen_core::ChildConfig) as the first
//! frame of a new stream, and waits for its [`Hello`](mitogen_core::Hello). The child runs the
//! same executable, so it serves the same [`remote!`](mitogen_core::remote) functions. The
//! master's `Router` (in `mitogen-master`) exposes these as `local()` and `fork()`.
//!
//! The modules read bottom up, each using only those above it (a test,
//! `tests/suite/layout.rs`, checks that no two import each other, directly or round a loop):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | values | `context`, `info`, `stats` | the parent's `Context` and `CallChain`, router info, connection counters |
//! | I/O | `io`, `process`, `transport` | deadline-bound reads and writes ([`iter_read`], [`write_all`]), child processes and their reaping, how a command's stdio is wired |
//! | trees | `routes` | the route monitor (`ADD_ROUTE`, `DEL_ROUTE`, `DETACHING`) and id blocks (`ALLOCATE_ID`) |
//! | base | `connect` | the common [`Options`], the handshake every method ends with, and its failures |
//! | bootstrap | `prompt`, `target`, `bootstrap`, `command` | prompts on a terminal, which executable fits which target, stage 1 and shipping the executable, the generic command method |
//! | methods | `local`, `fork`, `ssh`, `su`, `sudo`, `doas`, `containers`, `setns` | one file per method (doas shares su's prompt texts) |
//! | top | `method` | [`Method`], the one dispatch to each method, and `via=` |
#![deny(missing_docs)]

// Bottom to top: each module imports only modules above it in this list, never one below
// (checked by `tests/suite/layout.rs`).
mod bootstrap;
mod command;
mod connect;
mod containers;
mod context;
mod doas;
mod fork;
mod info;
mod io;
mod local;
mod method;
mod process;
mod prompt;
mod routes;
mod setns;
mod ssh;
mod stats;
mod strip;
mod su;
mod sudo;
mod target;
mod transport;

pub use bootstrap::{add_executable, ship_debug_info, shipped_digest};
pub use command::CommandSpec;
pub use connect::{default_remote_name, Options};
pub use containers::{
    BuildahOptions, DockerOptions, JailOptions, KubectlOptions, LxcOptions, LxdOptions, PodmanOptions,
};
pub use context::{CallChain, Context};
pub use doas::DoasOptions;
pub use fork::{connect_fork, ForkOptions, OnFork, OnStart};
pub use info::{router_info, RouterInfo, StreamInfo};
pub use io::{iter_read, write_all, IterRead};
pub use method::Method;
#[doc(hidden)]
pub use method::{connect_method, connect_via, via_connect, ViaOutcome, ViaRequest};
#[doc(hidden)]
pub use process::{shell_join, watch_pidfd, ChildProcess};
#[doc(hidden)]
pub use routes::{allocate_child_id, is_immediate_child, serve_allocate_id, upgrade_router, ID_BLOCK};
pub use setns::{SetnsKind, SetnsOptions};
pub use ssh::{CheckHostKeys, SshOptions};
#[doc(hidden)]
pub use stats::bootstrap_stats;
pub use stats::BootstrapStats;
pub use su::SuOptions;
pub use sudo::{SudoOptions, SUDO_PROMPT};
pub use transport::Transport;
