//! The master's broker and router (Python's `mitogen.master`).
//!
//! A master is context 0, the root of the context tree. Its [`Router`] extends the core router
//! with context-id allocation and the context factories: [`Router::connect`] for any method
//! (`mitogen-parent` implements them), and one method per Mitogen name (`local`, `fork`, `ssh`,
//! `sudo`, ...) over it.
#![deny(missing_docs)]

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mitogen_core::{BrokerOptions, Identity, Result};
pub use mitogen_parent::{
    BuildahOptions, CallChain, CheckHostKeys, CommandSpec, Context, DoasOptions, DockerOptions, ForkOptions,
    JailOptions, KubectlOptions, LxcOptions, LxdOptions, Method, Options, PodmanOptions, SetnsKind, SetnsOptions,
    SshOptions, SuOptions, SudoOptions,
};

mod monitor;

pub use mitogen_parent::{iter_read, write_all, IterRead};
pub use monitor::ProcessMonitor;

/// What [`Router::get_stats`] reports.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Contexts connected by this process, bootstraps, executables shipped and their bytes.
    pub bootstrap: mitogen_parent::BootstrapStats,
    /// Each directly connected stream and what crossed it.
    pub streams: Vec<mitogen_parent::StreamInfo>,
}

/// The master's broker: the core [`Broker`](mitogen_core::Broker) with the master's 5-second
/// shutdown grace period (Mitogen `mitogen.master.Broker`).
#[derive(Clone, Debug)]
pub struct Broker(mitogen_core::Broker);

impl Broker {
    /// Start a master broker thread.
    ///
    /// # Errors
    /// As [`mitogen_core::Broker::with_options`].
    pub fn new() -> Result<Broker> {
        let options = BrokerOptions { shutdown_timeout: Duration::from_secs(5), ..BrokerOptions::default() };
        mitogen_core::Broker::with_options(options).map(Broker)
    }
}

impl Deref for Broker {
    type Target = mitogen_core::Broker;

    fn deref(&self) -> &mitogen_core::Broker {
        &self.0
    }
}

/// The master's router: a core [`Router`](mitogen_core::Router) acting as context 0, plus the
/// context-id allocator (Mitogen `mitogen.master.Router`). Derefs to the core router.
#[derive(Clone, Debug)]
pub struct Router {
    core: mitogen_core::Router,
    next_id: Arc<AtomicU32>,
}

impl Router {
    /// A master router on `broker`, or on a new private broker when `None` (Mitogen
    /// `Router(broker=None)`).
    ///
    /// # Errors
    /// As [`Broker::new`] when a broker must be started.
    pub fn new(broker: Option<&mitogen_core::Broker>) -> Result<Router> {
        let broker = match broker {
            Some(b) => b.clone(),
            None => Broker::new()?.0,
        };
        let core = mitogen_core::Router::with_identity(&broker, Identity::master());
        let next_id = Arc::new(AtomicU32::new(1));
        mitogen_parent::serve_allocate_id(&core, next_id.clone())?;
        let router = Router { core, next_id };
        if std::env::var_os("MITOGEN_PROFILING").is_some() {
            router.enable_profiling()?;
        }
        Ok(router)
    }

    /// Allocate a context id unique within this master (Mitogen `allocate_id`).
    pub fn allocate_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Start a child context running this program's own executable, over a socketpair
    /// (Mitogen `local()`). The call returns once the child has answered the handshake.
    ///
    /// ```no_run
    /// fn pid() -> u32 {
    ///     std::process::id()
    /// }
    /// mitogen_core::remote!(pid);
    ///
    /// let router = mitogen_master::Router::new(None)?;
    /// let child = router.local(Default::default())?;
    /// assert_ne!(child.call(pid, ())?, std::process::id());
    /// router.shutdown_and_join();
    /// # Ok::<(), mitogen_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`StreamError`](mitogen_core::StreamError) if the child cannot start or dies before the
    /// handshake, naming the command and its last output;
    /// [`TimeoutError`](mitogen_core::TimeoutError) if it does not answer within
    /// `connect_timeout`; [`GeneralError`](mitogen_core::GeneralError) for an invalid option.
    pub fn local(&self, options: Options) -> Result<Context> {
        self.connect(Method::Local, &options)
    }

    /// Start a context through any command: `spec.argv` (for example `["env", "-i"]`,
    /// `["setpriv", "--reuid=nobody", "--"]`, `["systemd-run", "--pipe", "--"]`, or nothing
    /// for a plain `sh`) runs the boot command, which needs nothing on the target but a POSIX
    /// shell: it runs this executable from the target account's private cache, or receives a
    /// copy first (compressed when the target has `gzip`). This is the generic method the
    /// named ones (ssh, sudo, containers) are built on; it has no Mitogen counterpart of its
    /// own.
    ///
    /// ```no_run
    /// fn uid() -> u32 {
    ///     // SAFETY: getuid has no preconditions.
    ///     unsafe { libc::getuid() }
    /// }
    /// mitogen_core::remote!(uid);
    ///
    /// let router = mitogen_master::Router::new(None)?;
    /// let argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"];
    /// let spec = mitogen_master::CommandSpec { argv: argv.map(Into::into).to_vec(), ..Default::default() };
    /// let nobody = router.command(spec, Default::default())?;
    /// assert_ne!(nobody.call(uid, ())?, 0);
    /// router.shutdown_and_join();
    /// # Ok::<(), mitogen_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`StreamError`](mitogen_core::StreamError) of kind `ChildStart` if the command cannot be
    /// started, `Eof` (with the last lines printed) if it ends before the handshake, `Cancelled`
    /// if the broker shuts down meanwhile, `CorruptExecutable` if the cached copy is not the one
    /// shipped, `Other` naming each refused place when stage 1 finds nowhere private to run from;
    /// [`TimeoutError`](mitogen_core::TimeoutError) if nothing answers within `connect_timeout`.
    pub fn command(&self, spec: CommandSpec, options: Options) -> Result<Context> {
        self.connect(spec, &options)
    }

    /// Start a context on another host through the system's `ssh` (Mitogen `Router.ssh()`): the
    /// user's `~/.ssh/config`, agent, jump hosts and ControlMaster apply. Nothing needs to be
    /// installed on the host but a POSIX shell: the executable ships itself there once per
    /// account (see [`command`](Router::command)). Named `ssh.<host>` (`ssh.<host>:<port>` when
    /// the port is not 22).
    ///
    /// ```no_run
    /// fn hostname() -> String {
    ///     std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
    /// }
    /// mitogen_core::remote!(hostname);
    ///
    /// let router = mitogen_master::Router::new(None)?;
    /// let ssh = mitogen_master::SshOptions { username: Some("deploy".into()), ..mitogen_master::SshOptions::new("web1") };
    /// let web1 = router.ssh(ssh, Default::default())?;
    /// println!("{}", web1.call(hostname, ())?);
    /// router.shutdown_and_join();
    /// # Ok::<(), mitogen_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// A `Password` [`StreamError`](mitogen_core::StreamError) ("SSH password is incorrect",
    /// "SSH password was requested, but none specified", "SSH authentication is incorrect"), a
    /// `HostKey` one, or [`command`](Router::command)'s, an `Eof` one naming what ssh printed.
    pub fn ssh(&self, ssh: SshOptions, options: Options) -> Result<Context> {
        self.connect(ssh, &options)
    }

    /// Start a context in another account through `sudo` (Mitogen `Router.sudo()`): sudo's
    /// prompt is answered on a PTY with `sudo.password`. Named `sudo.<user>`.
    ///
    /// ```no_run
    /// let router = mitogen_master::Router::new(None)?;
    /// let root = router.sudo(mitogen_master::SudoOptions::default(), Default::default())?;
    /// # Ok::<(), mitogen_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// A `Password` [`StreamError`](mitogen_core::StreamError) ("sudo password is incorrect",
    /// "sudo password is required"), one naming an unsupported `sudo_args` option, or
    /// [`command`](Router::command)'s.
    pub fn sudo(&self, sudo: SudoOptions, options: Options) -> Result<Context> {
        self.connect(sudo, &options)
    }

    /// Start a context in another account through `su` on a PTY (Mitogen `Router.su()`).
    /// Named `su.<user>`.
    ///
    /// # Errors
    /// A `Password` [`StreamError`](mitogen_core::StreamError) ("su password is incorrect", "su
    /// password is required"), or [`command`](Router::command)'s.
    pub fn su(&self, su: SuOptions, options: Options) -> Result<Context> {
        self.connect(su, &options)
    }

    /// Start a context in another account through `doas` (Mitogen `Router.doas()`). Named
    /// `doas.<user>`.
    ///
    /// # Errors
    /// A `Password` [`StreamError`](mitogen_core::StreamError) ("doas password is incorrect",
    /// "doas password is required"), or [`command`](Router::command)'s.
    pub fn doas(&self, doas: DoasOptions, options: Options) -> Result<Context> {
        self.connect(doas, &options)
    }

    /// Start a context in a docker container (Mitogen `Router.docker()`): `docker exec` into a running one, or `docker run --rm` of an image. Named `docker.<container or image>`.
    ///
    /// # Errors
    /// A [`StreamError`](mitogen_core::StreamError) for conflicting options, an `Eof` one with
    /// what docker printed (`No such container`, ...), or [`command`](Router::command)'s.
    pub fn docker(&self, o: DockerOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in a podman container (current Mitogen's `Router.podman()`). Named `podman.<container>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn podman(&self, o: PodmanOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in a buildah working container (current Mitogen's `Router.buildah()`). Named `buildah.<container>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn buildah(&self, o: BuildahOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in an LXC container through `lxc-attach` (Mitogen `Router.lxc()`). Named `lxc.<container>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn lxc(&self, o: LxcOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in an LXD instance through `lxc exec` (Mitogen `Router.lxd()`), or an Incus one with `LxdOptions::incus` (`Router.incus()`). Named `lxd.<container>` / `incus.<container>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn lxd(&self, o: LxdOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in a FreeBSD jail through `jexec` (Mitogen `Router.jail()`). Named `jail.<container>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn jail(&self, o: JailOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context in a Kubernetes pod through `kubectl exec` (Mitogen `Router.kubectl()`). Named `kubectl.<pod>`.
    ///
    /// # Errors
    /// As [`command`](Router::command).
    pub fn kubectl(&self, o: KubectlOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context inside a container by entering its namespaces directly, with no container tool in the data path (Mitogen `Router.setns()`; needs root). Named `setns.<container>`.
    ///
    /// # Errors
    /// A [`StreamError`](mitogen_core::StreamError) if the leader cannot be found, the account
    /// does not exist in the container or a namespace cannot be entered, or
    /// [`command`](Router::command)'s.
    pub fn setns(&self, o: SetnsOptions, options: Options) -> Result<Context> {
        self.connect(o, &options)
    }

    /// Start a context with `method` (a [`Method`], or any method's options, such as an
    /// [`SshOptions`]) and `options`, through `options.via` when it is set (Mitogen's
    /// `Router.connect(method_name, **kwargs)`; each named method below is this).
    ///
    /// ```no_run
    /// use mitogen_master::{Options, Router, SshOptions};
    ///
    /// let router = Router::new(None)?;
    /// let web = router.connect(SshOptions::new("web1"), &Options::default())?;
    /// let db = router.connect(SshOptions::new("db1"), &Options { via: Some(web.clone()), ..Options::default() })?;
    /// # let _ = db;
    /// # Ok::<(), mitogen_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As the method's own factory.
    pub fn connect(&self, method: impl Into<Method>, options: &Options) -> Result<Context> {
        let method = method.into();
        match &options.via {
            Some(via) => mitogen_parent::connect_via(&self.core, via, &method, options),
            None => mitogen_parent::connect_method(&self.core, self.allocate_id(), &method, options),
        }
    }

    /// Ship `path` to targets this program's own executable does not fit (another machine, an
    /// older glibc, no glibc): this program built for another target, e.g. by `cargo build
    /// --release --target aarch64-unknown-linux-musl`. What it fits is read from the file. Builds
    /// in cargo's layout beside this one (`target/<triple>/<profile>/<program>`) are found
    /// without this call. Without one that fits, connecting fails with a
    /// [`NoExecutable`](mitogen_core::StreamErrorKind::NoExecutable) error naming the target and
    /// the command that builds one.
    ///
    /// # Errors
    /// If the file cannot be read or is not an ELF executable of a machine this library knows.
    pub fn add_executable(&self, path: &std::path::Path) -> Result<()> {
        mitogen_parent::add_executable(path)
    }

    /// Ship this program's executable to targets whole (`true`), or without its debug sections
    /// (`false`, the default). The debug sections (DWARF, `.debug_*`) are most of a build made
    /// with debug info (of a 28 MB release build with line tables, 24 MB) and are never loaded;
    /// without them a remote panic's backtrace names its functions (the symbol table stays) but
    /// not their files and lines. Turn this on for file and line numbers in remote backtraces
    /// (and in profiles of remote contexts), at the cost of shipping the whole file to each new
    /// target once. Applies to this process's later connects (a different image is a different
    /// cache entry on the target); a context it starts ships by its own setting, off unless a
    /// function called there turns it on.
    pub fn ship_debug_info(&self, keep: bool) {
        mitogen_parent::ship_debug_info(keep)
    }

    /// Fork this process into a new child context (Mitogen `fork()`); see
    /// [`connect_fork`](mitogen_parent::connect_fork) for what the child keeps.
    ///
    /// # Errors
    /// As [`local`](Router::local).
    pub fn fork(&self, options: ForkOptions) -> Result<Context> {
        match &options.options.via {
            Some(_) if options.on_fork.is_some() || options.on_start.is_some() => Err(mitogen_core::Error::general(
                "fork(via=...) cannot carry on_fork/on_start closures to the via context",
            )),
            Some(_) => self.connect(Method::Fork, &options.options),
            None => mitogen_parent::connect_fork(&self.core, self.allocate_id(), &options),
        }
    }

    /// Debug logs in every process of the tree from now on (Mitogen `Router.enable_debug()`):
    /// each context started afterwards (and each of its descendants) gets `debug` and writes
    /// its own `$TMPDIR/mitogen.<pid>.<unix time>.log` at debug level, a forked child under its
    /// own pid. This process writes one too when the program has installed no `log` logger
    /// (returned here); otherwise its records go to the program's logger as before.
    ///
    /// # Errors
    /// If this process's file cannot be created.
    pub fn enable_debug(&self) -> Result<Option<std::path::PathBuf>> {
        mitogen_core::set_debug_tree(true);
        mitogen_core::enable_master_debug_log()
            .map_err(|e| mitogen_core::Error::stream_io("cannot open a debug log", e))
    }

    /// Profile every process of the tree from now on (Mitogen `Router.profiling = True`; the
    /// `MITOGEN_PROFILING` environment variable does this when the router is made): this
    /// process, and each context started afterwards and its descendants, a forked child under
    /// its own pid. Each writes one folded-stacks file per thread,
    /// `$TMPDIR/mitogen.stats.<pid>.<thread>.<unix time>.folded`, on a graceful exit: a child
    /// when it shuts down, this process in [`shutdown_and_join`](Router::shutdown_and_join).
    /// `mitogen::profiler` merges them. See [`mitogen_core::profiling`].
    ///
    /// # Errors
    /// A [`GeneralError`](mitogen_core::GeneralError) if the sampler cannot start.
    pub fn enable_profiling(&self) -> Result<()> {
        mitogen_core::profiling::set_profile_tree(true);
        mitogen_core::profiling::start()
            .map(drop)
            .map_err(|e| mitogen_core::Error::general(format!("cannot start profiling: {e}")))
    }

    /// Whether contexts this process starts are profiled (Mitogen `Router.profiling`).
    pub fn profiling(&self) -> bool {
        mitogen_core::profiling::profile_tree()
    }

    /// What this process's connections did (Mitogen `Router.get_stats()`): contexts connected,
    /// executables shipped and their bytes, and each directly connected stream with the bytes
    /// and messages that crossed it.
    pub fn get_stats(&self) -> Stats {
        Stats { bootstrap: mitogen_parent::bootstrap_stats(), streams: self.get_router_info().streams }
    }

    /// This router's streams and routes (Mitogen `get_router_info()` and `get_stream_info()`);
    /// any other context answers the same through
    /// `ctx.call(mitogen_parent::router_info, ())`.
    pub fn get_router_info(&self) -> mitogen_parent::RouterInfo {
        mitogen_parent::RouterInfo::of(&self.core)
    }

    /// The core router.
    pub fn core(&self) -> &mitogen_core::Router {
        &self.core
    }

    /// Shut the broker down and wait for it (the end of `run_with_router`); then, if this
    /// process is profiled ([`enable_profiling`](Router::enable_profiling)), write its profile.
    pub fn shutdown_and_join(&self) {
        self.core.broker().shutdown();
        self.core.broker().join();
        match mitogen_core::profiling::finish() {
            Ok(paths) => paths.iter().for_each(|p| log::info!("profile written to {}", p.display())),
            Err(e) => log::error!("cannot write this process's profile: {e}"),
        }
    }
}

impl Deref for Router {
    type Target = mitogen_core::Router;

    fn deref(&self) -> &mitogen_core::Router {
        &self.core
    }
}
