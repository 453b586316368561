//! The byte-level framing on both pipes: `\n`-separated command lines in, buffered JSON lines out.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::json::J;

/// Reads stdin lines split on `\n` only, as pi does: JSON strings may hold U+2028/U+2029 and lines may be far larger
/// than any fixed buffer.
pub(crate) struct Lines<R> {
    reader: BufReader<R>,
    /// Survives a cancelled [`Lines::next`]: `read_until` appends what it consumed here before yielding, so a read
    /// interrupted by `select!` (the `sleep` hook) resumes where it stopped instead of losing half a line.
    pending: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Lines {
            reader: BufReader::new(reader),
            pending: Vec::new(),
        }
    }

    /// The next non-empty line without its `\n` (and a trailing `\r`), or `None` at EOF. Cancel-safe.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            self.reader.read_until(b'\n', &mut self.pending).await?;
            if self.pending.is_empty() {
                return Ok(None);
            }
            // Without a final `\n` this is the unterminated last line before EOF; the next call then sees EOF.
            let mut line = std::mem::take(&mut self.pending);
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.is_empty() {
                return Ok(Some(line));
            }
        }
    }
}

/// Buffered stdout. Callers write a command's whole burst and then [`Out::flush`], so an interactive reader sees each
/// burst promptly while floods still go out in large writes.
pub(crate) struct Out<W> {
    writer: BufWriter<W>,
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    pub(crate) fn new(writer: W) -> Self {
        Out {
            writer: BufWriter::with_capacity(64 * 1024, writer),
            scratch: Vec::with_capacity(4096),
        }
    }

    pub(crate) async fn send(&mut self, line: &J) -> std::io::Result<()> {
        self.scratch.clear();
        line.write_line(&mut self.scratch)?;
        self.writer.write_all(&self.scratch).await
    }

    pub(crate) async fn send_all(&mut self, lines: &[J]) -> std::io::Result<()> {
        for line in lines {
            self.send(line).await?;
        }
        Ok(())
    }

    /// Writes bytes as they are, for the pre-serialized flood line and deliberate non-JSON noise.
    pub(crate) async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[tokio::test]
    async fn lines_split_on_newline_only_and_drop_carriage_returns() {
        let input: &[u8] = b"{\"a\":\"x\xe2\x80\xa8y\"}\r\n\n\nlast";
        let mut lines = Lines::new(input);
        assert_eq!(
            lines.next().await.unwrap().unwrap(),
            b"{\"a\":\"x\xe2\x80\xa8y\"}"
        );
        assert_eq!(lines.next().await.unwrap().unwrap(), b"last");
        assert_eq!(lines.next().await.unwrap(), None);
    }
}
