//! Log records of a child: the forwarder to the parent, the `log` logger of a child, and the
//! master's side that logs what arrives (Mitogen `LogForwarder`, `LogHandler`).

use std::cell::Cell;

use super::ExternalContext;
use crate::message::Message;
use crate::router::Router;
use crate::wire::FORWARD_LOG;

/// A `FORWARD_LOG` record: `(context name, original target, level, message)`.
pub type LogRecord = (String, String, u8, String);

/// Sends log records to the parent's `FORWARD_LOG` handle (Mitogen `LogForwarder`), for the
/// child's stdio and, through [`ChildLogger`], its `log` records, so `log::info!` in a remote
/// function shows at the master under the target `mitogen::ctx::<name>`.
#[derive(Clone)]
pub(super) struct LogForwarder {
    pub(super) router: Router,
    pub(super) parent_id: u32,
    pub(super) name: String,
}

thread_local! {
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

impl LogForwarder {
    pub(super) fn forward(&self, target: &str, level: log::Level, line: &str) {
        // A record logged while forwarding (say, a write error) would recurse: drop it.
        if FORWARDING.with(|f| f.replace(true)) {
            return;
        }
        let record: LogRecord = (self.name.clone(), target.to_owned(), level as u8, line.to_owned());
        self.send(&record);
        FORWARDING.with(|f| f.set(false));
    }

    fn send(&self, record: &LogRecord) {
        if let Ok(msg) = Message::pickled(record, FORWARD_LOG) {
            self.router.context_by_id(self.parent_id).send(msg);
        }
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
        let Some(ec) = ExternalContext::current() else { return };
        if ec.inner.pid == std::process::id() {
            ec.inner.forwarder.forward(record.target(), record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
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
    let ctx_target = format!("mitogen::ctx::{name}");
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
