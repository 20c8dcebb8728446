//! The top of the crate: [`Method`], one variant per connection method, the one dispatch to
//! each method's `connect`, and creating a context through another (`via=`).

use mitogen_core::{Error, ExternalContext, Result, Router};
use serde::{Deserialize, Serialize};

use crate::command::CommandSpec;
use crate::connect::Options;
use crate::containers::{
    BuildahOptions, DockerOptions, JailOptions, KubectlOptions, LxcOptions, LxdOptions, PodmanOptions,
};
use crate::doas::DoasOptions;
use crate::fork::{connect_fork, ForkOptions};
use crate::local::connect_local;
use crate::routes::allocate_child_id;
use crate::setns::SetnsOptions;
use crate::ssh::SshOptions;
use crate::su::SuOptions;
use crate::sudo::SudoOptions;

/// `Method`, its `From` conversions and its dispatch, from one list: each method built on the
/// bootstrap is one line here, `Variant(Options)` with its doc; its options type implements
/// [`Bootstrapped`](crate::command::Bootstrapped) in the method's file.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident($options:ty)),* $(,)?) => {
        /// A connection method with its own options: what a factory (`local()`, `fork()`, the
        /// generic command method, and the methods built on it) needs beyond the common
        /// [`Options`]. Serializable, so `via=` sends the same description to the via context,
        /// which runs it from there: every method works through any chain. Every method's
        /// options convert into it (`Method::from(SshOptions::new("web1"))`), so
        /// `Router::connect` takes either.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum Method {
            /// `local()`: this executable, over a socketpair.
            Local,
            /// `fork()` (without hooks: closures cannot travel).
            Fork,
            $($(#[$doc])* $variant($options),)*
        }

        $(impl From<$options> for Method {
            fn from(o: $options) -> Method {
                Method::$variant(o)
            }
        })*

        /// Start a context with `method` and `options` from this router, directly.
        ///
        /// # Errors
        /// As the method's own (see the `Router` method of each in `mitogen-master`).
        pub fn connect_method(
            router: &Router,
            context_id: u32,
            method: &Method,
            options: &Options,
        ) -> Result<crate::Context> {
            match method {
                Method::Local => connect_local(router, context_id, options),
                Method::Fork => {
                    let fork = ForkOptions { options: options.clone(), on_fork: None, on_start: None };
                    connect_fork(router, context_id, &fork)
                }
                $(Method::$variant(o) => crate::command::connect(router, context_id, o, options),)*
            }
        }
    };
}

methods! {
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

impl From<&Method> for Method {
    fn from(method: &Method) -> Method {
        method.clone()
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
        // Its own children that need an executable it has not ask it in turn.
        crate::bootstrap::serve_executables(router);
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
    // The via context asks this one for an executable that fits a target it cannot serve.
    crate::bootstrap::serve_executables(router);
    let request = ViaRequest { method: method.clone(), options: Options { via: None, ..options.clone() } };
    let outcome = via.call(via_connect, (request,))?;
    match outcome.result {
        Ok((id, name)) => Ok(crate::Context::from(mitogen_core::Context::new(router, id, Some(name)))),
        Err(e) => Err(e.prefixed(&format!("error occurred on host {} in {via_name}", outcome.hostname))),
    }
}
