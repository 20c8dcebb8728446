//! What `fork(2)` needs from the core, so a forked child can build its own broker and router.
//!
//! After `fork` only the forking thread exists in the child. Any lock another thread of the
//! parent held at that instant stays held for ever there, and any state such a thread was half
//! way through changing stays half changed. The core's process-wide state is therefore of three
//! kinds, and this module makes each safe (the list is repeated, with the parent crate's own
//! state, in `mitogen_parent`'s `fork` module):
//!
//! * **lock-free**: the process identity (`globals`), the current `ExternalContext`, id and
//!   handle counters, the remote-function table once built;
//! * **prepared before the fork by the forking thread**: the panic hook (installed once, here,
//!   never in the child), the remote-function table (built here, so no other thread can be
//!   half way through building it), and std's stdout and stderr locks, which [`prepare_fork`]
//!   holds across the `fork` and the child then releases, so `println!` works in the child even
//!   if another thread was printing at that instant;
//! * **never touched in the child**: std's backtrace lock (a forked child's panics carry no
//!   backtrace) and the program's own logger, when it is not this crate's: its locks and its
//!   file descriptors belong to the parent, so a forked child sets the log level to `Off`
//!   unless the installed logger is the core's forwarding logger.

use std::io::{StderrLock, StdoutLock};

/// Held by the forking thread across `fork(2)` (see [`prepare_fork`]). Drop it in the parent
/// after the fork; call [`ForkGuard::in_child`] in the child.
#[derive(Debug)]
#[must_use = "the guard must be held across fork() and released on both sides"]
pub struct ForkGuard {
    _stdout: StdoutLock<'static>,
    _stderr: StderrLock<'static>,
}

/// Prepare this process for a `fork(2)` whose child will run a context: install the panic hook
/// and build the remote-function table now, then take std's stdout and stderr locks, so no
/// other thread holds them at the instant of the fork.
///
/// After `fork` only the forking thread exists in the child, and a lock another thread held at
/// that instant stays held there for ever. The core's process-wide state is lock-free (the
/// identity, the current `ExternalContext`, counters), prepared here, or never touched in the
/// child: std's backtrace lock (a forked child's panics carry no backtrace) and a logger that
/// is not the core's (silenced in the child by [`ForkGuard::in_child`]).
pub fn prepare_fork() -> ForkGuard {
    crate::child::install_panic_hook();
    crate::remote::build_table();
    ForkGuard { _stdout: std::io::stdout().lock(), _stderr: std::io::stderr().lock() }
}

impl ForkGuard {
    /// In the forked child, right after `fork`: mark the process forked, forget the parent's
    /// latch socket of this thread, silence a logger that is not the core's, and release the
    /// stdio locks (this thread took them, so it may).
    pub fn in_child(self) {
        crate::globals::set_forked();
        crate::latch::forget_thread_socket_after_fork();
        if !crate::child::logger_is_ours() {
            log::set_max_level(log::LevelFilter::Off);
        }
        drop(self);
    }
}
