//! Log records of a child: the forwarder to the parent, the `log` logger of a child, and the
//! master's side that logs what arrives (Mitogen `LogForwarder`, `LogHandler`).

use std::cell::Cell;
use std::sync::Arc;

use super::ExternalContext;
use crate::message::Message;
use crate::router::Router;
use crate::sync::Mutex;
use crate::wire::FORWARD_LOG;

/// A `FORWARD_LOG` record: `(context name, original target, level, message)`.
pub type LogRecord = (String, String, u8, String);

/// Sends log records to the parent's `FORWARD_LOG` handle (Mitogen `LogForwarder`), for the
/// child's stdio and, through [`ChildLogger`], its `log` records, so `log::info!` in a remote
/// function shows at the master under the target `mitogen::ctx::<name>`.
///
/// A logger must never stop the messages it reports on. A record logged on the broker thread
/// may come from inside the broker (`mio` logs while a stream is registered), where sending it
/// at once would re-enter the broker: such records are queued, at most [`PENDING_MAX`], and sent
/// by a job the broker runs once the work in hand is done. A record logged on any other thread
/// is sent at once, so it reaches the master ahead of the reply of the call that logged it
/// (nothing in the library logs while holding a lock that sending takes). A record logged
/// while one is being sent is dropped: it would recurse.
#[derive(Clone)]
pub(super) struct LogForwarder {
    pub(super) router: Router,
    pub(super) parent_id: u32,
    pub(super) name: String,
    pub(super) pending: Arc<Mutex<Pending>>,
}

/// Records logged on the broker thread, waiting for the job that sends them.
#[derive(Default)]
pub(super) struct Pending {
    records: Vec<LogRecord>,
    /// Records not kept because `records` was full.
    dropped: u64,
}

/// At most this many records wait to be sent from the broker thread; more are counted and
/// reported as dropped.
pub(super) const PENDING_MAX: usize = 10_000;

thread_local! {
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

impl LogForwarder {
    pub(super) fn new(router: Router, parent_id: u32, name: String) -> LogForwarder {
        LogForwarder { router, parent_id, name, pending: Arc::default() }
    }

    pub(super) fn forward(&self, target: &str, level: log::Level, line: &str) {
        // Recursion, or `mio`'s own bookkeeping (which forwarding would make more of).
        if FORWARDING.with(Cell::get) || crate::broker::in_poller_call() {
            return;
        }
        let record: LogRecord = (self.name.clone(), target.to_owned(), level as u8, line.to_owned());
        if self.router.broker().on_broker_thread() {
            return self.queue(record);
        }
        FORWARDING.with(|f| f.set(true));
        self.send(&record);
        FORWARDING.with(|f| f.set(false));
    }

    /// Keep `record` for the broker's next pass; the first one waiting queues the job.
    fn queue(&self, record: LogRecord) {
        let first = {
            let mut pending = self.pending.lock();
            if pending.records.len() >= PENDING_MAX {
                pending.dropped += 1;
                return;
            }
            pending.records.push(record);
            pending.records.len() == 1
        };
        if first {
            let fwd = self.clone();
            // Fails only once the broker has exited: nothing can be sent then anyway.
            let _ = self.router.broker().defer_queued(move || fwd.send_pending());
        }
    }

    /// Send what the broker thread logged (on the broker thread, with nothing of its held).
    fn send_pending(&self) {
        let (records, dropped) = {
            let mut pending = self.pending.lock();
            (std::mem::take(&mut pending.records), std::mem::take(&mut pending.dropped))
        };
        FORWARDING.with(|f| f.set(true));
        for record in &records {
            self.send(record);
        }
        if dropped > 0 {
            let line = format!("{dropped} log records dropped: more than {PENDING_MAX} were waiting to be sent");
            self.send(&(self.name.clone(), "mitogen::log".to_owned(), log::Level::Warn as u8, line));
        }
        FORWARDING.with(|f| f.set(false));
    }

    fn send(&self, record: &LogRecord) {
        if let Ok(msg) = Message::pickled(record, FORWARD_LOG) {
            self.router.context_by_id(self.parent_id).send(msg);
        }
    }
}

/// Records a child logs before its context exists (while it starts), forwarded once it does.
static EARLY: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());
/// The process that keeps early records (0: none).
static EARLY_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// At most this many early records are kept.
const EARLY_MAX: usize = 1000;

/// Keep the records this process logs until its context exists (a child started by exec,
/// before [`ExternalContext::start`]).
pub(super) fn keep_early_records() {
    EARLY_PID.store(std::process::id(), std::sync::atomic::Ordering::Release);
}

/// Forward the records kept while `ec` started, in order.
pub(super) fn forward_early_records(ec: &ExternalContext) {
    if EARLY_PID.swap(0, std::sync::atomic::Ordering::AcqRel) != std::process::id() {
        return;
    }
    let early = std::mem::take(&mut *EARLY.lock());
    for (target, level, line) in early {
        ec.inner.forwarder.forward(&target, level, &line);
    }
}

/// The `log` logger of a child: forwards each record through the running
/// [`ExternalContext`]. It looks the context up per record, and only in the process that
/// installed it, so a forked child (which inherits the installed logger but not its parent's
/// router, whose threads do not exist there) forwards through its own context, or drops records
/// until it has one.
pub(super) struct ChildLogger {
    /// Not zero-sized, so its address tells it apart from any other logger.
    _tag: u8,
}

pub(super) static CHILD_LOGGER: ChildLogger = ChildLogger { _tag: 0 };

/// Whether the installed `log` logger is the core's [`ChildLogger`], which a forked child may
/// use (it forwards through the child's own context); any other belongs to the parent program.
pub(crate) fn logger_is_ours() -> bool {
    std::ptr::addr_eq(log::logger(), &CHILD_LOGGER)
}

impl log::Log for ChildLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        write_debug(record);
        // Forwarding I/O records would make more of them; and records the master would drop
        // are not sent (its level is the forward level).
        if record.target().starts_with(IO_TARGET)
            || record.level() as usize > FORWARD_LEVEL.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let pid = std::process::id();
        match ExternalContext::current() {
            Some(ec) if ec.inner.pid == pid => {
                ec.inner.forwarder.forward(record.target(), record.level(), &record.args().to_string());
            }
            // Before the context exists: kept, in the process that asked for it only (a forked
            // child must not take a lock its parent's threads may have held).
            _ if EARLY_PID.load(std::sync::atomic::Ordering::Acquire) == pid => {
                let mut early = EARLY.lock();
                if early.len() < EARLY_MAX {
                    early.push((record.target().to_owned(), record.level(), record.args().to_string()));
                }
            }
            _ => {}
        }
    }

    fn flush(&self) {}
}

/// Most verbose level this child forwards (`log::LevelFilter as usize`), from its config.
/// An atomic: a forked child sets its own without a lock.
static FORWARD_LEVEL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Set this child's levels from its config: records at `log_level` and above are forwarded, and
/// with `debug` its debug log file takes debug records too. The process's `log` maximum is the
/// most verbose of the two when the logger is the core's (a forked child of a program with a
/// logger of its own stays silent).
pub(super) fn apply_levels(config: &super::ChildConfig) {
    use log::LevelFilter;
    let forward = LevelFilter::iter().nth(config.log_level).unwrap_or(LevelFilter::Info);
    FORWARD_LEVEL.store(forward as usize, std::sync::atomic::Ordering::Relaxed);
    if logger_is_ours() {
        log::set_max_level(if config.debug { forward.max(LevelFilter::Debug) } else { forward });
    }
}

/// The target prefix a master logs its children's records under: `mitogen::ctx::<name>`.
pub const CTX_TARGET: &str = "mitogen::ctx::";

/// The most verbose level at which the installed `log` logger takes records of `target`, within
/// [`log::max_level`] (`Off` when it takes none).
fn logger_level(target: &str) -> log::LevelFilter {
    let max = log::max_level();
    let takes = |level: log::Level| {
        level <= max && log::logger().enabled(&log::Metadata::builder().target(target).level(level).build())
    };
    log::Level::iter().filter(|&l| takes(l)).last().map_or(log::LevelFilter::Off, |l| l.to_level_filter())
}

/// The level, and the table of the master's levels, for a new child named `name`: the most
/// verbose level at which the master keeps that child's records (it logs them under
/// `mitogen::ctx::<name>`), so the child filters at the source and a quiet master is not sent
/// records it would drop (Mitogen passes its `log_level` the same way).
///
/// In the master this asks its logger, for the child's own target and for every
/// `mitogen::ctx::` directive in `RUST_LOG` (the `env_logger` convention), so the table carries
/// per-context levels down the tree. In a child it looks the name up in the table its parent
/// gave it, longest prefix first, as `env_logger` matches directives.
pub fn child_log_level(name: &str) -> (log::LevelFilter, Vec<(String, usize)>) {
    let target = format!("{CTX_TARGET}{name}");
    if let Some(ec) = ExternalContext::current().filter(|ec| ec.inner.pid == std::process::id()) {
        let table = ec.config().log_levels.clone();
        let own = log::LevelFilter::iter().nth(ec.config().log_level).unwrap_or(log::LevelFilter::Info);
        return (level_in(&table, &target).unwrap_or(own), table);
    }
    let mut prefixes = vec![CTX_TARGET.to_owned(), target.clone()];
    prefixes.extend(ctx_directives(&std::env::var("RUST_LOG").unwrap_or_default()));
    prefixes.sort_unstable();
    prefixes.dedup();
    let table = prefixes
        .into_iter()
        .map(|prefix| {
            let level = logger_level(&prefix) as usize;
            (prefix, level)
        })
        .collect();
    (logger_level(&target), table)
}

/// The names of an `env_logger` spec's directives (`target=level,target,level/regex`) that
/// cover children's records: those under [`CTX_TARGET`].
fn ctx_directives(spec: &str) -> Vec<String> {
    let directives = spec.split('/').next().unwrap_or_default();
    let names = directives.split(',').filter_map(|d| d.split('=').next()).map(str::trim);
    names.filter(|n| n.starts_with(CTX_TARGET)).map(str::to_owned).collect()
}

/// The level of the longest prefix of `target` in `table`, as `env_logger` matches directives.
fn level_in(table: &[(String, usize)], target: &str) -> Option<log::LevelFilter> {
    let (_, level) =
        table.iter().filter(|(prefix, _)| target.starts_with(prefix.as_str())).max_by_key(|(p, _)| p.len())?;
    log::LevelFilter::iter().nth(*level)
}

/// Log a forwarded record under `mitogen::ctx::<name>` (the master's side of a child's log
/// forwarder); an intermediate child passes it on up unchanged.
pub fn log_forwarded(msg: &Message) {
    if msg.is_dead() {
        return;
    }
    let Ok(record) = msg.unpickle::<LogRecord>() else {
        return log::error!("bad FORWARD_LOG record from context {}", msg.src_id);
    };
    // An intermediate passes records on unchanged, so the master names the context they came
    // from, not the one that relayed them.
    if let Some(ec) = ExternalContext::current().filter(|ec| ec.inner.pid == std::process::id()) {
        return ec.inner.forwarder.send(&record);
    }
    let (name, target, level, line) = record;
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    let ctx_target = format!("{CTX_TARGET}{name}");
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&ctx_target)
            .args(format_args!("{target}: {line}"))
            .module_path(None)
            .file(None)
            .line(None)
            .build(),
    );
}

/// The target of the I/O log: each stream's reads, writes and disconnection (Mitogen's
/// `mitogen.io` logger). Off unless asked for ([`set_io_logging`], `MITOGEN_LOG_LEVEL=IO`).
pub const IO_TARGET: &str = "mitogen::io";

static IO_LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the debug log file takes [`IO_TARGET`] records too (`log_to_file(.., io: true, ..)`
/// and `MITOGEN_LOG_LEVEL=IO` turn it on).
pub fn set_io_logging(on: bool) {
    IO_LOGGING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The line a record is written as in a log file: `HH:MM:SS.mmm L target: message` (Mitogen's
/// `%(asctime)s %(levelname).1s %(name)s: %(message)s`, time of day in UTC).
pub fn format_record(record: &log::Record<'_>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (s, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    let level = record.level().as_str().chars().next().unwrap_or('?');
    format!("{:02}:{:02}:{:02}.{ms:03} {level} {}: {}\n", s / 3600, s / 60 % 60, s % 60, record.target(), record.args())
}

/// Whether debug logging was asked for in this tree (Mitogen `enable_debug()`): every context
/// this process starts gets `debug`, and writes a debug log file of its own.
static DEBUG_TREE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The debug log file of this process: its descriptor and the pid that opened it. Atomics, not
/// a lock: a forked child inherits them, sees a pid that is not its own, and leaves the file to
/// its parent until it opens one of its own.
static DEBUG_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static DEBUG_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Ask for debug logging in every context this process starts from now on.
pub fn set_debug_tree(on: bool) {
    DEBUG_TREE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_debug_tree`] was called (in a child: whether its parent asked for debug).
pub fn debug_tree() -> bool {
    DEBUG_TREE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Open this process's debug log, `$TMPDIR/mitogen.<pid>.<unix time>.log` (Mitogen's
/// `/tmp/mitogen.<pid>.log` plus the time, so a reused pid gets a new file), where every
/// record this process logs at debug level and above is written. Returns its path.
///
/// # Errors
/// If the file cannot be created.
pub fn open_debug_log() -> std::io::Result<std::path::PathBuf> {
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;
    let pid = std::process::id();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let path = crate::sys::temp_dir().join(format!("mitogen.{pid}.{secs}.log"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let old = DEBUG_FD.swap(file.into_raw_fd(), Ordering::AcqRel);
    let old_pid = DEBUG_PID.swap(pid, Ordering::AcqRel);
    if old >= 0 && old_pid == pid {
        // SAFETY: this process opened `old` and no longer publishes it.
        drop(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(old) });
    }
    Ok(path)
}

/// Write a record to this process's debug log, if it has one: `HH:MM:SS.mmm L target: message`
/// (Mitogen's format, in UTC), one `write(2)` per line on an `O_APPEND` file.
pub(crate) fn write_debug(record: &log::Record<'_>) {
    use std::sync::atomic::Ordering;
    let fd = DEBUG_FD.load(Ordering::Acquire);
    if fd < 0 || DEBUG_PID.load(Ordering::Acquire) != std::process::id() {
        return;
    }
    if record.target().starts_with(IO_TARGET) && !IO_LOGGING.load(Ordering::Relaxed) {
        return;
    }
    let line = format_record(record);
    // SAFETY: the descriptor stays open for the process's life once published for this pid.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = crate::sys::write(fd, line.as_bytes());
}

/// Write `line` to this process's debug log, if it has one, as a record of the child at error
/// level: for the watchdog, which may not go through a logger (the broker may hold its locks).
pub(crate) fn write_debug_line(line: &str) {
    write_debug(
        &log::Record::builder().level(log::Level::Error).target("mitogen::child").args(format_args!("{line}")).build(),
    );
}

/// Make the library's own logger this process's `log` logger, unless the program installed
/// one of its own; returns whether the library's is the logger now. In a master it writes
/// records to the debug log file, if one is open, and nothing else; a forked child of the
/// process then keeps it (it is fork-safe, where a program's logger is not, and is silenced in
/// a fork), writes its own debug log and forwards its records. Done by
/// [`enable_master_debug_log`] and, in the parent, by a `fork()` with `debug`; a program that
/// installs its logger later then cannot.
pub fn install_library_logger() -> bool {
    log::set_logger(&CHILD_LOGGER).is_ok() || logger_is_ours()
}

/// In a master: open its debug log and, when the program has installed no `log` logger, make
/// the library's logger (see [`install_library_logger`]) write there at debug level. With a
/// logger of the program's own, the master's records go to that logger as before. Returns the
/// file's path when it is written to.
///
/// # Errors
/// If the file cannot be created.
pub fn enable_master_debug_log() -> std::io::Result<Option<std::path::PathBuf>> {
    if !install_library_logger() {
        return Ok(None);
    }
    let path = open_debug_log()?;
    log::set_max_level(log::LevelFilter::Debug);
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter;

    #[test]
    fn rust_log_directives_for_children_and_the_longest_prefix_wins() {
        let spec = "info,mitogen::ctx::web=debug, mitogen::ctx::db ,mitogen_core=trace/some.*regex";
        assert_eq!(ctx_directives(spec), ["mitogen::ctx::web", "mitogen::ctx::db"]);
        assert!(ctx_directives("debug").is_empty());
        let table = vec![
            ("mitogen::ctx::".to_owned(), LevelFilter::Warn as usize),
            ("mitogen::ctx::web".to_owned(), LevelFilter::Debug as usize),
            ("mitogen::ctx::web.db".to_owned(), LevelFilter::Off as usize),
        ];
        assert_eq!(level_in(&table, "mitogen::ctx::web.cache"), Some(LevelFilter::Debug));
        assert_eq!(level_in(&table, "mitogen::ctx::web.db"), Some(LevelFilter::Off));
        assert_eq!(level_in(&table, "mitogen::ctx::mail"), Some(LevelFilter::Warn));
        assert_eq!(level_in(&table, "elsewhere"), None);
    }
}
