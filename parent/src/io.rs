//! Deadline-bound I/O on a command's descriptors before the framed protocol starts: waiting,
//! writing everything, the end of output. Every wait is bounded by one deadline and polled in
//! slices, so a broker shutdown cancels it within 50 ms.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mitogen_core::sys;
use mitogen_core::{Error, Result, StreamErrorKind};

/// The end of the command's output, before the handshake (the caller adds its last lines).
pub(crate) fn eof() -> Error {
    Error::stream_kind(StreamErrorKind::Eof { last_lines: Vec::new() }, "EOF")
}

/// Wait until one of `fds` is ready, the deadline passes, or the broker shuts down; polled in
/// slices so a shutdown is noticed within 50 ms.
pub(crate) fn wait(fds: &mut [sys::PollFd<'_>], deadline: Instant, cancelled: &dyn Fn() -> bool) -> Result<()> {
    loop {
        let left = check(deadline, cancelled)?;
        let slice = left.min(Duration::from_millis(50));
        if sys::poll(fds, Some(slice)).map_err(|e| Error::stream_io("poll", e))? > 0 {
            return Ok(());
        }
    }
}

/// The time left before `deadline`; an error once it has passed or the broker shuts down.
pub(crate) fn check(deadline: Instant, cancelled: &dyn Fn() -> bool) -> Result<Duration> {
    if cancelled() {
        return Err(Error::stream_kind(StreamErrorKind::Cancelled, "connection cancelled"));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::timeout("no answer from stage 1"));
    }
    Ok(left)
}

/// One of our ends of the child's stdin and stdout, non-blocking for the bootstrap.
pub(crate) fn prepare(fd: &OwnedFd) -> Result<()> {
    sys::set_nonblocking(fd.as_fd(), true).map_err(|e| Error::stream_io("cannot prepare the child's stdio", e))
}

/// Write all of `data` to a non-blocking `fd` by `deadline`, unless `cancelled`.
pub(crate) fn write_all(
    fd: BorrowedFd<'_>,
    mut data: &[u8],
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    while !data.is_empty() {
        match sys::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait(&mut [sys::writable(fd)], deadline, cancelled)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if sys::is_disconnection(&e) => return Err(eof()),
            Err(e) => return Err(Error::stream_io("write to the command failed", e)),
        }
    }
    Ok(())
}
