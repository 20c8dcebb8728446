//! [`LineSplitter`]: bytes from a child's stdout, stderr or terminal, cut into lines.

/// The longest line [`LineSplitter`] passes on whole.
pub(crate) const MAX_LINE: usize = 64 << 10;

/// Cuts a byte stream into lines, whatever sizes it arrives in (Mitogen's `iter_split` over an
/// `IoLogger`'s buffer): a line split across reads is joined, a trailing `\r` (a terminal's
/// line end) is dropped, invalid UTF-8 is replaced, and a line longer than 64 KiB is cut
/// into pieces of that size. Used for a child's stdio forwarded as
/// log records and for the stderr a parent keeps for error messages.
///
/// ```
/// let mut lines = Vec::new();
/// let mut split = mitogen_core::LineSplitter::default();
/// split.feed(b"one\r\ntw", |l| lines.push(l.to_owned()));
/// split.feed(b"o\nthr", |l| lines.push(l.to_owned()));
/// split.feed(b"", |l| lines.push(l.to_owned())); // end of file flushes "thr"
/// assert_eq!(lines, ["one", "two", "thr"]);
/// ```
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// The bytes after the last line end: where a prompt that waits for an answer sits.
    pub fn pending(&self) -> &[u8] {
        &self.partial
    }

    /// Add `data` and call `emit` for each complete line; an empty `data` means end of file and
    /// flushes a final partial line.
    pub fn feed(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.partial.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|&b| b == b'\n') {
            emit(&line(&self.partial[start..start + pos]));
            start += pos + 1;
        }
        self.partial.drain(..start);
        // A line that never ends (`cat /dev/zero`) is passed on in pieces: memory stays bounded.
        while self.partial.len() >= MAX_LINE {
            emit(&line(&self.partial[..MAX_LINE]));
            self.partial.drain(..MAX_LINE);
        }
        if data.is_empty() && !self.partial.is_empty() {
            emit(&line(&self.partial));
            self.partial.clear();
        }
    }
}

fn line(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes.strip_suffix(b"\r").unwrap_or(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_never_ends_is_cut_into_pieces_and_memory_stays_bounded() {
        let mut split = LineSplitter::default();
        let mut pieces = 0;
        for _ in 0..100 {
            split.feed(&[0u8; 10_000], |l| {
                assert_eq!(l.len(), MAX_LINE);
                pieces += 1;
            });
            assert!(split.pending().len() < MAX_LINE);
        }
        assert_eq!(pieces, 1_000_000 / MAX_LINE);
    }
}
