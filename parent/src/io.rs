//! Deadline-bound I/O on a command's descriptors before the framed protocol starts (Mitogen's
//! `mitogen.parent.iter_read` and `write_all`, which `mitogen.master` re-exports), and the
//! bootstrap's own waits: every wait is bounded by one deadline and polled in slices, so a
//! broker shutdown cancels a bootstrap within 50 ms. Blocking and non-blocking descriptors are
//! both accepted: each read or write waits for readiness with `ppoll(2)` (nanosecond timeouts,
//! so no busy loop near a deadline) and only then touches the fd.

use std::iter::FusedIterator;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mitogen_core::sys;
use mitogen_core::{io_op, Error, Result, StreamErrorKind};

/// Bytes read per `read(2)` by [`iter_read`], as in Mitogen.
const READ_CHUNK: usize = 4096;

/// Bytes written per `write(2)` by [`write_all`] to a *blocking* fd: `PIPE_BUF`, which a pipe
/// reported writable by `poll(2)` always accepts without blocking.
const BLOCKING_WRITE_CHUNK: usize = sys::PIPE_BUF;

/// The longest single wait: how soon a cancellation is noticed.
const SLICE: Duration = Duration::from_millis(50);

/// The time left until `deadline`, `None` meaning forever; zero once it has passed.
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Whether `deadline` has passed.
fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Read up to 4096-byte chunks from `fd` until end of file, an error or `deadline` (Mitogen
/// `iter_read(fd, deadline=None)`).
///
/// `fd` may be blocking or non-blocking: each read is preceded by a `poll(2)` wait until the fd is
/// readable or the deadline passes, so a read never blocks past the deadline. The iterator yields
/// `Ok(chunk)` for each chunk read (never empty), and ends after yielding exactly one error:
///
/// * [`TimeoutError`](mitogen_core::TimeoutError) once `deadline` has passed (checked before every
///   wait, so a reader that keeps receiving data still stops at the deadline);
/// * [`StreamError`](mitogen_core::StreamError) "attempt to read past end of file" when `read(2)`
///   returns 0, or fails with `EIO` (a TTY whose other end closed), `ECONNRESET` (a socket) or
///   `EPIPE`;
/// * [`StreamError`](mitogen_core::StreamError) for any other failure of `poll(2)` or `read(2)`.
///
/// `EINTR` is retried. Dropping the iterator stops reading; the fd stays open (it is borrowed).
///
/// ```no_run
/// # use std::os::fd::AsFd;
/// # use std::time::{Duration, Instant};
/// # fn demo(stdout: &std::process::ChildStdout) -> mitogen_core::Result<()> {
/// let deadline = Instant::now() + Duration::from_secs(10);
/// let mut got = Vec::new();
/// for chunk in mitogen_parent::iter_read(stdout.as_fd(), Some(deadline)) {
///     got.extend_from_slice(&chunk?);
///     if got.ends_with(b"READY\n") {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
pub fn iter_read(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> IterRead<'_> {
    IterRead { fd, deadline, done: false }
}

/// The iterator returned by [`iter_read`]: yields `Ok` chunks of up to 4096 bytes read from an fd,
/// then at most one error, then ends.
#[derive(Debug)]
pub struct IterRead<'fd> {
    fd: BorrowedFd<'fd>,
    deadline: Option<Instant>,
    done: bool,
}

impl IterRead<'_> {
    fn read_chunk(&self) -> Result<Vec<u8>> {
        let raw = self.fd.as_raw_fd();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if expired(self.deadline) {
                return Err(Error::timeout(format!("read from fd {raw} timed out")));
            }
            let mut pfd = [sys::readable(self.fd)];
            let ready = sys::poll(&mut pfd, remaining(self.deadline))
                .map_err(|e| Error::stream_io(format!("poll on fd {raw} failed"), e))?;
            if ready == 0 {
                continue;
            }
            // POLLIN, POLLHUP or POLLERR: read(2) tells data, end of file and errors apart.
            let read = io_op(|| match sys::read(self.fd, &mut buf) {
                // A spurious wake-up of a non-blocking fd: wait again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                other => other.map(Some),
            });
            match read {
                Ok((None, false)) => continue,
                Ok((Some(0), _)) | Ok((_, true)) => {
                    return Err(Error::stream(format!("attempt to read past end of file on fd {raw}")))
                }
                Ok((Some(n), false)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) => return Err(Error::stream_io(format!("read from fd {raw} failed"), e)),
            }
        }
    }
}

impl Iterator for IterRead<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        let item = self.read_chunk();
        self.done = item.is_err();
        Some(item)
    }
}

impl FusedIterator for IterRead<'_> {}

/// Write all of `data` to `fd`, waiting for it to become writable as needed (Mitogen
/// `write_all(fd, s, deadline=None)`).
///
/// `fd` may be blocking or non-blocking: each write is preceded by a `poll(2)` wait until the fd
/// is writable or the deadline passes. On a blocking fd each `write(2)` is limited to `PIPE_BUF`
/// bytes, which a writable pipe accepts without blocking, so the deadline is honoured there too.
///
/// # Errors
/// * [`TimeoutError`](mitogen_core::TimeoutError) when `deadline` passes before all of `data` was
///   written (checked before every wait; part of `data` may have been written);
/// * [`StreamError`](mitogen_core::StreamError) when the fd is disconnected (`EPIPE`,
///   `ECONNRESET` or `EIO`) before the write completes, or `poll(2)`/`write(2)` fails otherwise.
///
/// `EINTR` is retried. Writing to a pipe whose reader is gone raises `SIGPIPE`, which the Rust
/// runtime ignores in Rust programs; a host that restores its default action gets killed instead
/// of receiving the `StreamError`.
pub fn write_all(fd: BorrowedFd<'_>, data: &[u8], deadline: Option<Instant>) -> Result<()> {
    let (raw, total) = (fd.as_raw_fd(), data.len());
    write_until(fd, data, deadline, &|| false).map_err(|stop| match stop {
        Stop::Expired(written) => {
            Error::timeout(format!("write to fd {raw} timed out after {written} of {total} bytes"))
        }
        Stop::Disconnected(written) => {
            Error::stream(format!("fd {raw} disconnected after {written} of {total} bytes were written"))
        }
        Stop::Cancelled => Error::stream_kind(StreamErrorKind::Cancelled, "write cancelled"),
        Stop::Failed(what, e) => Error::stream_io(format!("{what} on fd {raw} failed"), e),
    })
}

/// Why [`write_until`] stopped short.
enum Stop {
    /// The deadline passed, after this many bytes.
    Expired(usize),
    /// The reader went away (`EPIPE`, `ECONNRESET`, `EIO`), after this many bytes.
    Disconnected(usize),
    /// `cancelled` said so.
    Cancelled,
    /// `poll` or `write` failed otherwise.
    Failed(&'static str, std::io::Error),
}

/// The one write loop: all of `data` to `fd` by `deadline`, unless `cancelled` (asked at least
/// every 50 ms while waiting).
fn write_until(
    fd: BorrowedFd<'_>,
    data: &[u8],
    deadline: Option<Instant>,
    cancelled: &dyn Fn() -> bool,
) -> std::result::Result<(), Stop> {
    let total = data.len();
    let nonblocking = sys::is_nonblocking(fd).map_err(|e| Stop::Failed("fcntl", e))?;
    let max_chunk = if nonblocking { usize::MAX } else { BLOCKING_WRITE_CHUNK };
    let mut written = 0;
    while written < total {
        if cancelled() {
            return Err(Stop::Cancelled);
        }
        if expired(deadline) {
            return Err(Stop::Expired(written));
        }
        let wait = remaining(deadline).map_or(SLICE, |left| left.min(SLICE));
        if sys::poll(&mut [sys::writable(fd)], Some(wait)).map_err(|e| Stop::Failed("poll", e))? == 0 {
            continue;
        }
        let window = &data[written..total.min(written.saturating_add(max_chunk))];
        // POLLOUT, POLLHUP or POLLERR: write(2) tells progress and disconnection apart.
        let result = io_op(|| match sys::write(fd, window) {
            // A spurious wake-up of a non-blocking fd: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        });
        match result {
            Ok((_, true)) => return Err(Stop::Disconnected(written)),
            Ok((n, false)) => written += n,
            Err(e) => return Err(Stop::Failed("write", e)),
        }
    }
    Ok(())
}

/// The end of the command's output, before the handshake (the caller adds its last lines).
pub(crate) fn eof() -> Error {
    Error::stream_kind(StreamErrorKind::Eof { last_lines: Vec::new() }, "EOF")
}

/// Wait until one of `fds` is ready, the deadline passes, or the broker shuts down; polled in
/// slices so a shutdown is noticed within 50 ms.
pub(crate) fn wait(fds: &mut [sys::PollFd<'_>], deadline: Instant, cancelled: &dyn Fn() -> bool) -> Result<()> {
    loop {
        let left = check(deadline, cancelled)?;
        if sys::poll(fds, Some(left.min(SLICE))).map_err(|e| Error::stream_io("poll", e))? > 0 {
            return Ok(());
        }
    }
}

/// The time left before `deadline`; an error once it has passed or the broker shuts down.
pub(crate) fn check(deadline: Instant, cancelled: &dyn Fn() -> bool) -> Result<Duration> {
    if cancelled() {
        return Err(cancelled_error());
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::timeout("no answer from stage 1"));
    }
    Ok(left)
}

fn cancelled_error() -> Error {
    Error::stream_kind(StreamErrorKind::Cancelled, "connection cancelled")
}

/// One of our ends of the child's stdin and stdout, non-blocking for the bootstrap.
pub(crate) fn prepare(fd: &OwnedFd) -> Result<()> {
    sys::set_nonblocking(fd.as_fd(), true).map_err(|e| Error::stream_io("cannot prepare the child's stdio", e))
}

/// The bootstrap's write to the command: all of `data` by `deadline`, unless `cancelled`; the
/// command's end is an [`eof`].
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8], deadline: Instant, cancelled: &dyn Fn() -> bool) -> Result<()> {
    write_until(fd, data, Some(deadline), cancelled).map_err(|stop| match stop {
        Stop::Expired(_) => Error::timeout("no answer from stage 1"),
        Stop::Disconnected(_) => eof(),
        Stop::Cancelled => cancelled_error(),
        Stop::Failed(_, e) => Error::stream_io("write to the command failed", e),
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    #[test]
    fn iter_read_yields_data_then_stream_error_at_eof() {
        for nonblocking in [true, false] {
            let (r, w) = sys::pipe(nonblocking).unwrap();
            write_all(w.as_fd(), b"hello", None).unwrap();
            drop(w);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut it = iter_read(r.as_fd(), Some(deadline));
            assert_eq!(it.next().unwrap().unwrap(), b"hello");
            let err = it.next().unwrap().unwrap_err();
            assert!(err.is_stream(), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("attempt to read past end of file"), "{msg}");
            assert!(msg.contains(&format!("fd {}", r.as_raw_fd())), "{msg}");
            assert!(it.next().is_none());
            assert!(it.next().is_none());
        }
    }

    #[test]
    fn iter_read_chunks_are_at_most_4096_bytes() {
        let (r, w) = sys::pipe(true).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        write_all(w.as_fd(), &data, None).unwrap();
        drop(w);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        let mut it = iter_read(r.as_fd(), Some(deadline));
        for item in &mut it {
            match item {
                Ok(chunk) => {
                    assert!(!chunk.is_empty() && chunk.len() <= READ_CHUNK);
                    got.extend_from_slice(&chunk);
                }
                Err(e) => assert!(e.is_stream(), "{e}"),
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn iter_read_times_out_on_idle_pipe() {
        for nonblocking in [true, false] {
            let (r, _w) = sys::pipe(nonblocking).unwrap();
            let start = Instant::now();
            let mut it = iter_read(r.as_fd(), Some(start + TIMEOUT));
            let err = it.next().unwrap().unwrap_err();
            assert!(start.elapsed() >= TIMEOUT);
            assert!(err.is_timeout(), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("fd {}", r.as_raw_fd())), "{msg}");
            assert!(it.next().is_none());
        }
    }

    #[test]
    fn write_all_to_pipe_without_reader_is_stream_error() {
        for nonblocking in [true, false] {
            let (r, w) = sys::pipe(nonblocking).unwrap();
            drop(r);
            let deadline = Instant::now() + Duration::from_secs(30);
            let err = write_all(w.as_fd(), b"hello", Some(deadline)).unwrap_err();
            assert!(err.is_stream(), "{err}");
            assert!(err.to_string().contains(&format!("fd {}", w.as_raw_fd())));
        }
    }

    #[test]
    fn write_all_times_out_on_full_pipe() {
        // 4 MiB is more than a pipe can buffer (64 KiB by default, 1 MiB at most unprivileged).
        let data = vec![b'x'; 4 << 20];
        for nonblocking in [true, false] {
            let (_r, w) = sys::pipe(nonblocking).unwrap();
            let start = Instant::now();
            let err = write_all(w.as_fd(), &data, Some(start + TIMEOUT)).unwrap_err();
            assert!(start.elapsed() >= TIMEOUT);
            assert!(err.is_timeout(), "{err}");
            assert!(err.to_string().contains(&format!("fd {}", w.as_raw_fd())));
        }
    }

    #[test]
    fn write_all_and_iter_read_round_trip() {
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (r, w) = sys::pipe(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            let result = write_all(w.as_fd(), &data, Some(deadline));
            drop(w);
            result
        });
        let mut got = Vec::new();
        let mut last = None;
        for item in iter_read(r.as_fd(), Some(deadline)) {
            match item {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(e) => last = Some(e),
            }
        }
        writer.join().unwrap().unwrap();
        assert!(last.unwrap().is_stream());
        assert_eq!(got, expected);
    }

    #[test]
    fn write_all_of_nothing_succeeds_at_once() {
        let (_r, w) = sys::pipe(true).unwrap();
        let past = Instant::now();
        write_all(w.as_fd(), b"", Some(past)).unwrap();
    }

    #[test]
    fn pipes_are_cloexec() {
        for nonblocking in [true, false] {
            let (r, w) = sys::pipe(nonblocking).unwrap();
            for fd in [r.as_fd(), w.as_fd()] {
                assert!(sys::is_cloexec(fd).unwrap());
                assert_eq!(sys::is_nonblocking(fd).unwrap(), nonblocking);
            }
        }
    }
}
