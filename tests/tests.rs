//! The end-to-end suite: one binary, a module per area (see `lib.rs` for the harness).

#[path = "suite/fixtures.rs"]
mod fixtures;

/// `(context id, pid, parent ids)` of the context it runs in; shared by the process tests.
pub(crate) fn local_whoami() -> (u32, u32, Vec<u32>) {
    (mitogen::context_id(), std::process::id(), mitogen::parent_ids())
}
mitogen::remote!(local_whoami);

#[path = "suite/accounts.rs"]
mod accounts;
#[path = "suite/calls.rs"]
mod calls;
#[path = "suite/command.rs"]
mod command;
#[path = "suite/containers.rs"]
mod containers;
#[path = "suite/fork.rs"]
mod fork;
#[path = "suite/fork_safety.rs"]
mod fork_safety;
#[path = "suite/fuzz.rs"]
mod fuzz;
#[path = "suite/introspection.rs"]
mod introspection;
#[path = "suite/lifetime.rs"]
mod lifetime;
#[path = "suite/methods.rs"]
mod methods;
#[path = "suite/ssh.rs"]
mod ssh;

#[path = "suite/broker.rs"]
mod broker;
#[path = "suite/latch.rs"]
mod latch;
#[path = "suite/local.rs"]
mod local;
#[path = "suite/receiver.rs"]
mod receiver;
#[path = "suite/router.rs"]
mod router;
#[path = "suite/select.rs"]
mod select;
#[path = "suite/streams.rs"]
mod streams;
#[path = "suite/tree.rs"]
mod tree;
