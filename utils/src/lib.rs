//! Helpers useful on masters and children (Python's `mitogen.utils`).
#![deny(missing_docs)]

use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mitogen_core::Result;
use mitogen_master::Router;

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

/// Send log records at `level` and above to `path` (appending), or to standard error when `None`
/// (Mitogen `log_to_file`). `io = true` also enables the very verbose I/O records
/// (`mitogen::io` target). `MITOGEN_LOG_LEVEL` overrides `level`.
///
/// # Errors
/// If `path` cannot be opened, or a logger was already installed.
pub fn log_to_file(path: Option<&std::path::Path>, io: bool, level: log::LevelFilter) -> std::io::Result<()> {
    let level = std::env::var("MITOGEN_LOG_LEVEL").ok().and_then(|l| l.parse().ok()).unwrap_or(level);
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if !io {
        builder.filter_module("mitogen::io", log::LevelFilter::Info);
    }
    builder.format(|buf, record| {
        writeln!(buf, "{} {} {}: {}", std::process::id(), record.level(), record.target(), record.args())
    });
    if let Some(p) = path {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.try_init().map_err(std::io::Error::other)
}
