//! What a method's command says before the bootstrap: password prompts, host-key questions,
//! authentication failures (Mitogen's per-method `SetupProtocol` regexes over stderr or the
//! terminal). A method supplies a [`Prompts`]; the bootstrap feeds it the command's stderr (or
//! PTY) line by line and, for the unterminated text a prompt leaves waiting, partial line by
//! partial line, and types what it answers.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use mitogen_core::{sys, Error, LineSplitter, Result, Secret};

use crate::io::send;

/// The password followed by a newline, as typed at a prompt. Passwords are
/// [`Secret`](mitogen_core::Secret)s: typed at the prompt, never passed in argv, never shown
/// (`Debug` prints `[secret]`), and serialized as they are, so a `via=` context can type them
/// (as Mitogen sends them in its connect request).
pub(crate) fn typed(password: &Secret) -> Vec<u8> {
    let mut bytes = password.0.as_bytes().to_vec();
    bytes.push(b'\n');
    bytes
}

/// A [`Password`] [`StreamError`](mitogen_core::StreamError) (Mitogen's per-method
/// `PasswordError`).
pub(crate) fn password_error(text: &str) -> Error {
    Error::stream_kind(mitogen_core::StreamErrorKind::Password, text)
}

/// The password a method types at its prompt, once (Mitogen's `password_sent`): a second
/// prompt means it was wrong, a prompt with none given means one is required.
pub(crate) struct PasswordState {
    password: Option<Secret>,
    sent: bool,
    incorrect: String,
    required: String,
}

impl PasswordState {
    /// For `method` (`"sudo"`, `"su"`, `"doas"`): "<method> password is incorrect", "<method>
    /// password is required".
    pub(crate) fn new(password: Option<Secret>, method: &str) -> PasswordState {
        let (incorrect, required) =
            (format!("{method} password is incorrect"), format!("{method} password is required"));
        PasswordState::with_texts(password, incorrect, required)
    }

    /// With the method's own error texts.
    pub(crate) fn with_texts(password: Option<Secret>, incorrect: String, required: String) -> PasswordState {
        PasswordState { password, sent: false, incorrect, required }
    }

    /// A password prompt appeared (`at`, for the debug log): the bytes to type, or why not.
    pub(crate) fn prompt(&mut self, method: &str, at: &str) -> Result<Option<Vec<u8>>> {
        match (&self.password, self.sent) {
            (None, _) => Err(self.required()),
            (Some(_), true) => Err(self.incorrect()),
            (Some(p), false) => {
                log::debug!("{method}: typing the password at {at:?}");
                self.sent = true;
                Ok(Some(typed(p)))
            }
        }
    }

    /// Whether a password was given.
    pub(crate) fn given(&self) -> bool {
        self.password.is_some()
    }

    /// Whether it was typed.
    pub(crate) fn sent(&self) -> bool {
        self.sent
    }

    /// The "incorrect" error.
    pub(crate) fn incorrect(&self) -> Error {
        password_error(&self.incorrect)
    }

    /// The "required" error.
    pub(crate) fn required(&self) -> Error {
        password_error(&self.required)
    }

    /// The command said the password was wrong (or, with none typed, that one is needed).
    pub(crate) fn refused(&self) -> Error {
        if self.sent || self.given() {
            self.incorrect()
        } else {
            self.required()
        }
    }
}

/// A method's reading of its command's output before the handshake.
pub(crate) trait Prompts: Send {
    /// A complete line (without its line end and surrounding `\r`). An error ends the connect.
    fn line(&mut self, _line: &str) -> Result<()> {
        Ok(())
    }

    /// The unterminated text since the last line end, where a prompt waits: the bytes to type
    /// if it is one. Asked again only after a new line starts.
    fn partial(&mut self, _text: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// The generic command method's: nothing to answer.
pub(crate) struct NoPrompts;

impl Prompts for NoPrompts {}

/// Reads a command's stderr or PTY during the bootstrap and gives it to a [`Prompts`]; answers
/// are written back to the same descriptor (a PTY master: the command's terminal), within the
/// connect's deadline.
pub(crate) struct PromptReader<'a> {
    fd: Option<BorrowedFd<'a>>,
    split: LineSplitter,
    answered: bool,
    /// The unanswered text the command waits after, if it waits (for a timeout's message: a
    /// prompt nobody recognised).
    waiting: Option<String>,
    deadline: Instant,
    /// Prompts also arrive on the data channel (a full PTY: `su` has nowhere else).
    on_data: bool,
    data_answered: bool,
    prompts: &'a mut dyn Prompts,
    on_line: &'a mut dyn FnMut(&str),
}

impl<'a> PromptReader<'a> {
    /// Read `fd` (non-blocking) for `prompts`; every complete line also goes to `on_line`.
    /// With `on_data`, what stage 1's channel carries before its markers is offered to
    /// `prompts` too ([`data_line`](Self::data_line), [`data_partial`](Self::data_partial)).
    /// Answers are typed by `deadline`.
    pub(crate) fn new(
        fd: Option<BorrowedFd<'a>>,
        prompts: &'a mut dyn Prompts,
        on_line: &'a mut dyn FnMut(&str),
        on_data: bool,
        deadline: Instant,
    ) -> PromptReader<'a> {
        let split = LineSplitter::default();
        let (answered, waiting, data_answered) = (false, None, false);
        PromptReader { fd, split, answered, waiting, deadline, on_data, data_answered, prompts, on_line }
    }

    /// The text the command printed last and waits after, unanswered: a prompt the method did
    /// not recognise, shown when the connect times out.
    pub(crate) fn waiting_at(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// Offer the unterminated `text` to the prompts; type the answer on `wfd`, if any.
    fn offer(&mut self, text: &str, wfd: BorrowedFd<'_>, cancelled: &dyn Fn() -> bool) -> Result<bool> {
        let text = text.trim_matches('\r');
        match self.prompts.partial(text)? {
            Some(answer) => {
                self.waiting = None;
                send(wfd, &answer, self.deadline, cancelled)?;
                Ok(true)
            }
            None => {
                self.waiting = Some(text.to_owned()).filter(|t| !t.trim().is_empty());
                Ok(false)
            }
        }
    }

    /// A complete line on the data channel that is not a marker.
    pub(crate) fn data_line(&mut self, line: &str) -> Result<()> {
        self.data_answered = false;
        self.waiting = None;
        match self.on_data {
            true => self.prompts.line(line.trim_matches('\r')),
            false => Ok(()),
        }
    }

    /// The data channel waits after `text`, with no line end: answer it on `wfd` if it is a
    /// prompt.
    pub(crate) fn data_partial(&mut self, text: &str, wfd: BorrowedFd<'_>, cancelled: &dyn Fn() -> bool) -> Result<()> {
        if !self.on_data || self.data_answered {
            return Ok(());
        }
        self.data_answered = self.offer(text, wfd, cancelled)?;
        Ok(())
    }

    /// The descriptor still to be read, until its end.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'a>> {
        self.fd
    }

    /// Read what has arrived; at end of file (or EIO: a PTY whose last slave closed) stop
    /// reading and flush the partial line.
    pub(crate) fn read_ready(&mut self) -> Result<()> {
        let Some(fd) = self.fd else { return Ok(()) };
        let mut buf = [0u8; 4096];
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(_) => 0,
        };
        let mut result = Ok(());
        let (prompts, on_line, answered) = (&mut *self.prompts, &mut *self.on_line, &mut self.answered);
        let waiting = &mut self.waiting;
        self.split.feed(&buf[..n], |line| {
            *answered = false;
            *waiting = None;
            let line = line.trim_matches('\r');
            if !line.is_empty() {
                on_line(line);
                if result.is_ok() {
                    result = prompts.line(line);
                }
            }
        });
        if n == 0 {
            self.fd = None;
        }
        result?;
        if !self.answered && !self.split.pending().is_empty() {
            let text = String::from_utf8_lossy(self.split.pending()).into_owned();
            self.answered = self.offer(&text, fd, &|| false)?;
        }
        Ok(())
    }

    /// Read until end of file or `deadline`: the last words of a command that ended (a
    /// `Permission denied` can arrive after its stdout closed).
    pub(crate) fn drain(&mut self, deadline: Instant) -> Result<()> {
        while let Some(fd) = self.fd {
            match sys::wait_readable(fd, Some(deadline)) {
                Ok(true) => self.read_ready()?,
                _ => break,
            }
        }
        Ok(())
    }
}

/// Read `fd` until end of file or `deadline`, passing each line to `on_line`.
pub(crate) fn drain(fd: Option<BorrowedFd<'_>>, deadline: Instant, on_line: &mut dyn FnMut(&str)) {
    let _ = PromptReader::new(fd, &mut NoPrompts, on_line, false, deadline).drain(deadline);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        let p = Secret::from("hunter2");
        assert_eq!(format!("{p:?} {p}"), "[secret] [secret]");
        assert_eq!(typed(&p), b"hunter2\n");
    }
}
