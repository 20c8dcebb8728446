//! Waiting for descriptors: one with a deadline, or many (`ppoll(2)`, nanosecond timeouts).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::time::TimeSpec;

pub use nix::poll::PollFd;

/// Interest in `fd` becoming readable (or hung up, or in error).
pub fn readable(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::POLLIN)
}

/// Interest in `fd` becoming writable (or hung up, or in error).
pub fn writable(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::POLLOUT)
}

/// Interest in nothing but `fd` hanging up (or being in error): for a descriptor another
/// thread reads, watched for its peer going away without taking its data.
pub fn hangup(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::empty())
}

/// Whether the last [`poll`] found `pfd` ready (any event, hang-up and error included).
pub fn is_ready(pfd: &PollFd<'_>) -> bool {
    pfd.revents().is_some_and(|r| !r.is_empty())
}

/// `ppoll(2)` on `fds` for at most `timeout` (forever when `None`), with nanosecond
/// resolution, so a short remaining time never becomes a zero-timeout spin. Returns how many
/// are ready; `EINTR` is `Ok(0)`, so callers re-check their deadline and loop.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    match nix::poll::ppoll(fds, timeout.map(TimeSpec::from_duration), None) {
        Ok(n) => Ok(n as usize),
        Err(Errno::EINTR) => Ok(0),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Wait until `fd` is readable or `deadline` passes. Returns whether it became readable;
/// `EINTR` is `Ok(false)`, so callers re-check their deadline and loop.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    poll(&mut [readable(fd)], timeout).map(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_wait_returns_on_time_and_sees_data() {
        let (r, w) = crate::sys::pipe(true).unwrap();
        let t0 = Instant::now();
        assert!(!wait_readable(r.as_fd(), Some(t0 + Duration::from_micros(300))).unwrap());
        assert!(t0.elapsed() >= Duration::from_micros(300), "no early return");
        crate::sys::write(w.as_fd(), b"x").unwrap();
        assert!(wait_readable(r.as_fd(), None).unwrap());
        let mut fds = [readable(r.as_fd()), writable(w.as_fd())];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 2);
        assert!(fds.iter().all(is_ready));
    }
}
