//! The top of the crate: [`Method`], one variant per connection method, the one dispatch to
//! each method's `connect`, and creating a context through another (`via=`).

use mitogen_core::{Error, ExternalContext, Result, Router};
use serde::{Deserialize, Serialize};

use crate::command::{connect_command, CommandSpec};
use crate::connect::Options;
use crate::containers::{
    connect_buildah, connect_docker, connect_jail, connect_kubectl, connect_lxc, connect_lxd, connect_podman,
    BuildahOptions, DockerOptions, JailOptions, KubectlOptions, LxcOptions, LxdOptions, PodmanOptions,
};
use crate::doas::{connect_doas, DoasOptions};
use crate::fork::{connect_fork, ForkOptions};
use crate::local::connect_local;
use crate::routes::allocate_child_id;
use crate::setns::{connect_setns, SetnsOptions};
use crate::ssh::{connect_ssh, SshOptions};
use crate::su::{connect_su, SuOptions};
use crate::sudo::{connect_sudo, SudoOptions};

/// A connection method with its own options: what a factory (`local()`, `fork()`, the generic
/// command method, and the methods built on it) needs beyond the common [`Options`].
/// Serializable, so `via=` sends the same description to the via context, which runs it from
/// there: every method works through any chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Method {
    /// `local()`: this executable, over a socketpair.
    Local,
    /// `fork()` (without hooks: closures cannot travel).
    Fork,
    /// The generic command method: see [`CommandSpec`].
    Command(CommandSpec),
    /// `ssh()`: see [`SshOptions`].
    Ssh(SshOptions),
    /// `sudo()`: see [`SudoOptions`].
    Sudo(SudoOptions),
    /// `su()`: see [`SuOptions`].
    Su(SuOptions),
    /// `doas()`: see [`DoasOptions`].
    Doas(DoasOptions),
    /// `docker()`: see [`DockerOptions`].
    Docker(DockerOptions),
    /// `podman()`: see [`PodmanOptions`].
    Podman(PodmanOptions),
    /// `buildah()`: see [`BuildahOptions`].
    Buildah(BuildahOptions),
    /// `lxc()`: see [`LxcOptions`].
    Lxc(LxcOptions),
    /// `lxd()` and `incus()`: see [`LxdOptions`].
    Lxd(LxdOptions),
    /// `jail()`: see [`JailOptions`].
    Jail(JailOptions),
    /// `kubectl()`: see [`KubectlOptions`].
    Kubectl(KubectlOptions),
    /// `setns()`: see [`SetnsOptions`].
    Setns(SetnsOptions),
}

/// `Method::Ssh(ssh)` from `ssh`, and so on, so `router.connect(ssh, &options)` reads as
/// Mitogen's `router.connect(ssh, **options)`.
macro_rules! method_from {
    ($($options:ty => $variant:ident),* $(,)?) => {
        $(impl From<$options> for Method {
            fn from(o: $options) -> Method {
                Method::$variant(o)
            }
        })*
    };
}

method_from!(
    CommandSpec => Command,
    SshOptions => Ssh,
    SudoOptions => Sudo,
    SuOptions => Su,
    DoasOptions => Doas,
    DockerOptions => Docker,
    PodmanOptions => Podman,
    BuildahOptions => Buildah,
    LxcOptions => Lxc,
    LxdOptions => Lxd,
    JailOptions => Jail,
    KubectlOptions => Kubectl,
    SetnsOptions => Setns,
);

impl From<&Method> for Method {
    fn from(method: &Method) -> Method {
        method.clone()
    }
}

/// Start a context with `method` and `options` from this router, directly.
///
/// # Errors
/// As the method's own (see the `Router` method of each in `mitogen-master`).
pub fn connect_method(router: &Router, context_id: u32, method: &Method, options: &Options) -> Result<crate::Context> {
    match method {
        Method::Local => connect_local(router, context_id, options),
        Method::Fork => {
            let fork = ForkOptions { options: options.clone(), on_fork: None, on_start: None };
            connect_fork(router, context_id, &fork)
        }
        Method::Command(spec) => connect_command(router, context_id, spec, options),
        Method::Ssh(ssh) => connect_ssh(router, context_id, ssh, options),
        Method::Sudo(sudo) => connect_sudo(router, context_id, sudo, options),
        Method::Su(su) => connect_su(router, context_id, su, options),
        Method::Doas(doas) => connect_doas(router, context_id, doas, options),
        Method::Docker(o) => connect_docker(router, context_id, o, options),
        Method::Podman(o) => connect_podman(router, context_id, o, options),
        Method::Buildah(o) => connect_buildah(router, context_id, o, options),
        Method::Lxc(o) => connect_lxc(router, context_id, o, options),
        Method::Lxd(o) => connect_lxd(router, context_id, o, options),
        Method::Jail(o) => connect_jail(router, context_id, o, options),
        Method::Kubectl(o) => connect_kubectl(router, context_id, o, options),
        Method::Setns(o) => connect_setns(router, context_id, o, options),
    }
}

/// How to create a context through another, as sent to the via context.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViaRequest {
    /// The method.
    pub method: Method,
    /// Its common options (without `via`).
    pub options: Options,
}

/// What [`via_connect`] answers: the new context's id and name, or the error connecting failed
/// with, of the same kind a direct connect gives (a `TimeoutError` stays one), plus the via
/// context's host name for the message.
#[derive(Debug, Serialize, Deserialize)]
pub struct ViaOutcome {
    /// The via context's host name (Mitogen "error occurred on host ...").
    pub hostname: String,
    /// `(id, name)` of the new context, or why it could not be made.
    pub result: std::result::Result<(u32, String), Error>,
}
mitogen_core::returns!(ViaOutcome);

/// Runs in the via context: create the requested child from this context's own executable, and
/// return its id and name (Mitogen `_proxy_connect`); a failure is returned as it is, not as a
/// `CallError`.
pub fn via_connect(request: ViaRequest) -> ViaOutcome {
    let connect = || {
        let ec =
            ExternalContext::current().ok_or_else(|| Error::general("via_connect runs only in a child context"))?;
        let router = ec.router();
        let id = allocate_child_id(router)?;
        let ctx = connect_method(router, id, &request.method, &request.options)?;
        Ok((id, ctx.name().unwrap_or_default().to_owned()))
    };
    ViaOutcome { hostname: mitogen_core::sys::hostname(), result: connect() }
}
mitogen_core::remote!(via_connect);

/// Create a context through `via` (Mitogen's `via=` parameter): `via` starts it with
/// [`via_connect`], announcing the route up the tree first.
///
/// # Errors
/// The error connecting failed with in the via context, of the same kind a direct connect
/// gives, its text starting `"error occurred on host <host> in <via context>"`;
/// [`ChannelError`](mitogen_core::ChannelError) if the via context is lost meanwhile.
pub fn connect_via(
    router: &Router,
    via: &crate::Context,
    method: &Method,
    options: &Options,
) -> Result<crate::Context> {
    let via_name = format!("{:?}", via.core());
    let request = ViaRequest { method: method.clone(), options: Options { via: None, ..options.clone() } };
    let outcome = via.call(via_connect, (request,))?;
    match outcome.result {
        Ok((id, name)) => Ok(crate::Context::from(mitogen_core::Context::new(router, id, Some(name)))),
        Err(e) => Err(e.prefixed(&format!("error occurred on host {} in {via_name}", outcome.hostname))),
    }
}
