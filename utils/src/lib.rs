//! Helpers useful on masters and children (Python's `mitogen.utils`).
#![deny(missing_docs)]

use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mitogen_core::Result;
use mitogen_master::Router;

pub mod profiler;

/// Run `func(router)` with a fresh master [`Router`] on its own broker, and always shut the
/// broker down and join it afterwards, also when `func` panics (Mitogen `run_with_router`).
///
/// # Errors
/// If the broker cannot be started; otherwise `func`'s own result is returned.
///
/// ```
/// let n = mitogen_utils::run_with_router(|router| Ok(router.context_id())).unwrap();
/// assert_eq!(n, 0);
/// ```
pub fn run_with_router<T>(func: impl FnOnce(&Router) -> Result<T>) -> Result<T> {
    let router = Router::new(None)?;
    let out = catch_unwind(AssertUnwindSafe(|| func(&router)));
    router.shutdown_and_join();
    match out {
        Ok(v) => v,
        Err(p) => resume_unwind(p),
    }
}

/// Decorator form of [`run_with_router`]: wrap `func` so each call runs with a fresh router
/// (Mitogen `with_router`).
pub fn with_router<A, T>(func: impl Fn(&Router, A) -> Result<T>) -> impl Fn(A) -> Result<T> {
    move |arg| run_with_router(|r| func(r, arg))
}

/// Where [`log_to_file`] writes, and from what level.
struct Sink {
    out: Box<dyn Write + Send>,
    io: bool,
}

/// The logger [`log_to_file`] installs once; each call replaces its sink (Mitogen removes the
/// handler a previous call added, so no record is written twice).
struct FileLogger {
    sink: mitogen_core::Mutex<Option<Sink>>,
}

static FILE_LOGGER: FileLogger = FileLogger { sink: mitogen_core::Mutex::new(None) };

impl log::Log for FileLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock();
        if let Some(sink) = sink.as_mut() {
            if sink.io || !record.target().starts_with(mitogen_core::IO_TARGET) {
                let _ = sink.out.write_all(mitogen_core::format_record(record).as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Some(sink) = self.sink.lock().as_mut() {
            let _ = sink.out.flush();
        }
    }
}

/// Send log records at `level` and above to `path` (truncated first), or to standard error when
/// `None` (Mitogen `log_to_file`), as `HH:MM:SS.mmm L target: message` lines. `io = true` also
/// writes the very verbose I/O records (the [`mitogen_core::IO_TARGET`] target), for debugging
/// hangs. `MITOGEN_LOG_LEVEL` (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`, or `IO`: debug plus
/// the I/O records) overrides both. A second call replaces the first's file and level.
///
/// # Errors
/// If `path` cannot be created, or the program installed a `log` logger of its own.
pub fn log_to_file(path: Option<&std::path::Path>, io: bool, level: log::LevelFilter) -> std::io::Result<()> {
    let (level, io) = match std::env::var("MITOGEN_LOG_LEVEL").map(|l| l.to_ascii_uppercase()) {
        Ok(l) if l == "IO" => (log::LevelFilter::Debug, true),
        Ok(l) => (l.parse().unwrap_or(level), io),
        Err(_) => (level, io),
    };
    let out: Box<dyn Write + Send> = match path {
        Some(p) => Box::new(std::io::LineWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::stderr()),
    };
    if !std::ptr::addr_eq(log::logger(), &FILE_LOGGER) {
        log::set_logger(&FILE_LOGGER)
            .map_err(|_| std::io::Error::other("a logger of the program's own is installed"))?;
    }
    *FILE_LOGGER.sink.lock() = Some(Sink { out, io });
    log::set_max_level(level);
    mitogen_core::set_io_logging(io);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_to_file_writes_mitogens_format_a_second_call_replaces_the_first_and_io_is_opt_in() {
        let dir = std::env::temp_dir().join(format!("mitogen-log-to-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (dir.join("first.log"), dir.join("second.log"));
        log_to_file(Some(&first), false, log::LevelFilter::Info).unwrap();
        log::info!(target: "app", "one");
        log::debug!(target: "app", "below the level");
        log_to_file(Some(&second), true, log::LevelFilter::Debug).unwrap();
        log::info!(target: "app", "two");
        // A child's handshake crosses a stream: with io, its reads are logged.
        run_with_router(|router| router.local(Default::default()).map(drop)).unwrap();
        let (first, second) = (std::fs::read_to_string(&first).unwrap(), std::fs::read_to_string(&second).unwrap());
        let line = first.lines().next().unwrap();
        // "HH:MM:SS.mmm I app: one"
        assert_eq!((line.len(), &line[2..3], &line[8..9], &line[12..]), (23, ":", ".", " I app: one"), "{first}");
        assert!(!first.contains("below the level") && !first.contains("two"), "{first}");
        assert!(second.contains(" I app: two\n") && !second.contains("one"), "{second}");
        assert!(second.contains(&format!(" D {}: ", mitogen_core::IO_TARGET)), "io records: {second}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
