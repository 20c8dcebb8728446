//! [`Side`]: one direction of a stream, over one file descriptor, with `io_op` semantics.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::sys;

/// Run `op`, trapping the errors that mean "the other end went away" (Mitogen `io_op`).
///
/// Returns `Ok((value, disconnected))`. `EIO` (a TTY whose other end closed), `ECONNRESET` (a
/// socket) and `EPIPE` (a pipe) are disconnection, reported as `(default, true)`; `EINTR` is
/// retried; any other error is returned.
pub fn io_op<T: Default>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<(T, bool)> {
    loop {
        match op() {
            Ok(v) => return Ok((v, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if sys::is_disconnection(&e) => return Ok((T::default(), true)),
            Err(e) => return Err(e),
        }
    }
}

/// One side (read or write) of a stream (Mitogen `mitogen.core.Side`).
///
/// Lets unidirectional descriptors (pipes) and bidirectional ones (sockets, TTYs) be used alike.
/// The descriptor is made non-blocking and close-on-exec when the side is created. After
/// [`close`](Side::close) the descriptor is never touched again: every operation fails or reports
/// disconnection.
#[derive(Debug)]
pub struct Side {
    fd: Option<OwnedFd>,
    raw: RawFd,
    keep_alive: bool,
}

impl Side {
    /// Take ownership of `fd`, making it non-blocking and close-on-exec.
    ///
    /// `keep_alive`: while this side is being read by a [`Broker`](crate::Broker), the broker's
    /// graceful shutdown waits for it to disconnect (Mitogen `Side.keep_alive`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the descriptor's flags cannot be set.
    pub fn new(fd: OwnedFd, keep_alive: bool) -> Result<Side> {
        let prep = sys::set_nonblocking(fd.as_fd(), true).and_then(|_| sys::set_cloexec(fd.as_fd(), true));
        prep.map_err(|e| Error::stream_io(format!("cannot prepare fd {}", fd.as_raw_fd()), e))?;
        let raw = fd.as_raw_fd();
        Ok(Side { fd: Some(fd), raw, keep_alive })
    }

    /// The descriptor, or `None` once closed (Mitogen `fd`).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// The descriptor number this side had, for log lines; still answers after closing.
    pub fn raw_fd(&self) -> RawFd {
        self.raw
    }

    /// Whether the broker's shutdown should wait for this side (Mitogen `keep_alive`).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether [`close`](Side::close) was called.
    pub fn closed(&self) -> bool {
        self.fd.is_none()
    }

    /// Close the descriptor if it is open. Later operations never touch it.
    pub fn close(&mut self) {
        self.fd = None;
    }

    /// Read up to `buf.len()` bytes, like a regular file: `Ok(0)` means the other end is gone
    /// (end of file, or `EIO`/`ECONNRESET`/`EPIPE`), as it does after `close`.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is ready; any other unexpected I/O error.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(fd) = &self.fd else { return Ok(0) };
        io_op(|| sys::read(fd.as_fd(), buf)).map(|(n, _)| n)
    }

    /// Read up to `max` bytes into the spare capacity of `vec` (appending, without zeroing it
    /// first); same results as [`read`](Side::read).
    ///
    /// # Errors
    /// As [`read`](Side::read).
    pub fn read_into_spare(&self, vec: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let Some(fd) = &self.fd else { return Ok(0) };
        io_op(|| sys::read_into_spare(fd.as_fd(), vec, max)).map(|(n, _)| n)
    }

    /// Write as much of `buf` as the descriptor takes: `Ok(None)` means the other end is gone
    /// (or the side was closed).
    ///
    /// # Errors
    /// `WouldBlock` when the descriptor is full; any other unexpected I/O error.
    pub fn write(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    /// As [`write`](Side::write), gathering from several buffers with one `writev(2)`.
    ///
    /// # Errors
    /// As [`write`](Side::write).
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<Option<usize>> {
        let Some(fd) = &self.fd else { return Ok(None) };
        match io_op(|| sys::writev(fd.as_fd(), bufs).map(Some))? {
            (_, true) => Ok(None),
            (n, false) => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_mask_disconnection() {
        let (a, b) = sys::socketpair(false).unwrap();
        let a = Side::new(a, true).unwrap();
        let b = Side::new(b, true).unwrap();
        assert!(sys::is_nonblocking(a.fd().unwrap()).unwrap());
        assert!(sys::is_cloexec(a.fd().unwrap()).unwrap());
        assert_eq!(a.write(b"hi").unwrap(), Some(2));
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 2);
        assert_eq!(b.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(b);
        assert_eq!(a.read(&mut buf).unwrap(), 0, "peer closed reads as end of file");
        // Writing to a closed socket peer raises EPIPE, which is disconnection, not an error.
        assert_eq!(a.write(b"x").unwrap(), None);
    }

    #[test]
    fn closed_side_never_touches_fd() {
        let (a, _b) = sys::socketpair(false).unwrap();
        let mut a = Side::new(a, false).unwrap();
        a.close();
        assert!(a.closed());
        assert!(a.fd().is_none());
        let mut buf = [0u8; 1];
        assert_eq!(a.read(&mut buf).unwrap(), 0);
        assert_eq!(a.write(b"x").unwrap(), None);
    }
}
