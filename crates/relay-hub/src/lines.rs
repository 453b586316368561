//! Re-assembles lines from output chunks. The runtime delivers stdout in frames of its own size
//! (Docker: at most 32 KiB), so a chunk may hold part of a line or many lines. Lines are split on
//! `\n` only: pi's JSON may contain U+2028/U+2029, which other splitters treat as line breaks.
//!
//! Not tokio-util's `LinesCodec`: that copies every line into a `String`, ends the stream at the
//! first line that is not UTF-8 (pi's output is passed through as bytes), and costs 2-3 times as
//! much per line (`relay-bench`'s `line-splitting`, in docs/benchmarks.md).

use bytes::{Bytes, BytesMut};

/// Longest line kept. pi's lines reach hundreds of KiB (a tool's accumulated output); anything
/// beyond this is a runaway process, and the line is dropped rather than buffered forever.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: BytesMut,
    /// Set while skipping the rest of an over-long line.
    discarding: bool,
    /// How many over-long lines were dropped.
    dropped: u64,
}

impl LineSplitter {
    /// A splitter with nothing buffered.
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// A splitter that continues a line whose start was read elsewhere (from the engine's log
    /// during recovery).
    pub fn with_pending(pending: &[u8]) -> LineSplitter {
        let mut s = LineSplitter::new();
        s.buf.extend_from_slice(pending);
        s
    }

    /// Feeds a chunk and appends every line it completes (without the `\n`) to `out`. A line
    /// that lies within one chunk is a slice of it, not a copy.
    pub fn push(&mut self, chunk: &Bytes, out: &mut Vec<Bytes>) {
        let mut rest: &[u8] = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (head, tail) = (&rest[..pos], &rest[pos + 1..]);
            if self.discarding {
                self.discarding = false;
            } else if self.buf.is_empty() {
                out.push(chunk.slice_ref(head));
            } else {
                self.buf.extend_from_slice(head);
                out.push(self.buf.split().freeze());
            }
            rest = tail;
        }
        if self.discarding {
            return;
        }
        if self.buf.len() + rest.len() > MAX_LINE_BYTES {
            self.buf.clear();
            self.discarding = true;
            self.dropped += 1;
            tracing::warn!(limit = MAX_LINE_BYTES, "dropping an over-long output line");
            return;
        }
        self.buf.extend_from_slice(rest);
    }

    /// Returns a final line that was not terminated by `\n`, if any (at end of stream).
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.discarding || self.buf.is_empty() {
            self.buf.clear();
            return None;
        }
        Some(self.buf.split().freeze())
    }

    /// Number of over-long lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(&Bytes::copy_from_slice(c), &mut out);
        }
        out.extend(s.finish());
        out.into_iter().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn lines_split_across_chunks_are_reassembled() {
        assert_eq!(
            split(&[b"{\"a\"", b":1}\n{\"b", b"\":2}\n"]),
            [b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
    }

    #[test]
    fn many_lines_in_one_chunk_come_out_in_order() {
        assert_eq!(
            split(&[b"1\n2\n3\n"]),
            [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
        );
    }

    #[test]
    fn only_newline_splits_not_unicode_line_separators() {
        let s = "{\"t\":\"a\u{2028}b\u{2029}c\r\"}\n";
        assert_eq!(
            split(&[s.as_bytes()]),
            [s.trim_end_matches('\n').as_bytes().to_vec()]
        );
    }

    #[test]
    fn an_unterminated_last_line_is_returned_at_the_end() {
        assert_eq!(split(&[b"a\nb"]), [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn a_line_larger_than_64_kib_survives() {
        let big = vec![b'x'; 300 * 1024];
        let mut chunks: Vec<&[u8]> = big.chunks(32 * 1024).collect();
        chunks.push(b"\n");
        let out = split(&chunks);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 300 * 1024);
    }

    #[test]
    fn an_over_long_line_is_dropped_and_the_next_line_kept() {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        for _ in 0..(MAX_LINE_BYTES / chunk.len() + 1) {
            s.push(&chunk, &mut out);
        }
        s.push(&Bytes::from_static(b"tail\nnext\n"), &mut out);
        assert_eq!(out, [Bytes::from_static(b"next")]);
        assert_eq!(s.dropped(), 1);
    }
}
