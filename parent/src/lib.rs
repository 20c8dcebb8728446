//! Creating and talking to child contexts (Python's `mitogen.parent`, `mitogen.fork` and the
//! connection methods).
//!
//! A parent starts a child, sends it its [`ChildConfig`](mitogen_core::ChildConfig) as the first
//! frame of a new stream, and waits for its [`Hello`](mitogen_core::Hello). The child runs the
//! same executable, so it serves the same [`remote!`](mitogen_core::remote) functions. The
//! master's `Router` (in `mitogen-master`) exposes these as `local()` and `fork()`.
#![deny(missing_docs)]

mod bootstrap;
mod command;
mod containers;
mod context;
mod doas;
mod fork;
mod info;
mod local;
mod process;
mod prompt;
mod setns;
mod ssh;
mod su;
mod sudo;
mod transport;
mod via;

pub use bootstrap::{add_executable, bootstrap_stats, BootstrapStats};
pub use command::{connect_command, CommandSpec};
pub use containers::{
    connect_buildah, connect_docker, connect_jail, connect_kubectl, connect_lxc, connect_lxd, connect_podman,
    BuildahOptions, DockerOptions, JailOptions, KubectlOptions, LxcOptions, LxdOptions, PodmanOptions,
};
pub use context::{CallChain, Context};
pub use doas::{connect_doas, DoasOptions};
pub use fork::{connect_fork, ForkOptions, OnFork, OnStart};
pub use info::{router_info, RouterInfo, StreamInfo};
pub use local::{connect_local, default_remote_name, Options};
pub use process::{shell_join, watch_pidfd, ChildProcess};
pub use setns::{connect_setns, SetnsKind, SetnsOptions};
pub use ssh::{connect_ssh, CheckHostKeys, SshOptions};
pub use su::{connect_su, SuOptions};
pub use sudo::{connect_sudo, SudoOptions, SUDO_PROMPT};
pub use transport::Transport;
pub use via::{
    allocate_child_id, connect_method, connect_via, is_immediate_child, serve_allocate_id, upgrade_router, via_connect,
    Method, ViaOutcome, ViaRequest, ID_BLOCK,
};
