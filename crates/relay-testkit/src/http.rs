//! Just enough HTTP/1.1 to read one request per connection and write one response.
//!
//! pi's OpenAI SDK (undici) sends a `Content-Length` body (see
//! `testdata/pi-1.5.2/llm-requests-openai.jsonl`), but chunked bodies are decoded too so a
//! different client version does not break the mock. Every limit below turns bad input into an
//! error value, never a panic or an unbounded allocation.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest request line, header line or chunk-size line. pi's longest line is well under 200 bytes.
const MAX_LINE: usize = 8 * 1024;

/// Most header lines (or trailer lines) in one request; pi sends about 20.
const MAX_HEADERS: usize = 100;

/// Largest request body. pi's first request is about 5 KB and each later one carries the whole
/// conversation, so this leaves room for long test sessions.
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection closed or failed before a whole request arrived; nobody is left to answer.
    Closed,
    /// The bytes are not an HTTP/1.x request; worth a `400`.
    Malformed(&'static str),
    /// The request exceeds one of the limits; worth a `413` (or `431` for headers).
    TooLarge(&'static str),
}

/// Request line and headers of a request.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    /// The request target as sent, query included.
    pub(crate) target: String,
    /// Header names lower-cased, values trimmed, in arrival order.
    pub(crate) headers: Vec<(String, String)>,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The target without query or fragment.
    pub(crate) fn path(&self) -> &str {
        let end = self.target.find(['?', '#']).unwrap_or(self.target.len());
        &self.target[..end]
    }

    fn framing(&self) -> Result<Framing, ReadError> {
        let codings: Vec<&str> = self
            .values("transfer-encoding")
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|coding| !coding.is_empty())
            .collect();
        if let Some(last) = codings.last() {
            // Transfer-Encoding overrides Content-Length, and a request body is only delimited if
            // chunked is the final coding. The mock does not decompress, so chunked must be the
            // only coding.
            return if codings.len() == 1 && last.eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(ReadError::Malformed("unsupported transfer-encoding"))
            };
        }

        let mut length = None;
        for value in self
            .values("content-length")
            .flat_map(|value| value.split(','))
        {
            let value = value.trim();
            if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(ReadError::Malformed("invalid content-length"));
            }
            let parsed = value
                .parse::<usize>()
                .map_err(|_| ReadError::TooLarge("body too large"))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(ReadError::Malformed("conflicting content-length values"));
            }
            length = Some(parsed);
        }
        match length {
            Some(length) if length > MAX_BODY => Err(ReadError::TooLarge("body too large")),
            Some(length) => Ok(Framing::Length(length)),
            None => Ok(Framing::Length(0)),
        }
    }

    fn values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads the request line and headers.
pub(crate) async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Head, ReadError> {
    // RFC 9112 §2.2: a server should ignore empty lines before the request line (some clients
    // send a stray CRLF after a previous body).
    let mut line = read_line(reader).await?.ok_or(ReadError::Closed)?;
    for _ in 0..4 {
        if !line.is_empty() {
            break;
        }
        line = read_line(reader).await?.ok_or(ReadError::Closed)?;
    }

    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(
            "request line is not `METHOD target HTTP/1.x`",
        ));
    };
    if method.is_empty()
        || !method.bytes().all(|byte| byte.is_ascii_graphic())
        || target.is_empty()
        || !version.starts_with("HTTP/1.")
    {
        return Err(ReadError::Malformed(
            "request line is not `METHOD target HTTP/1.x`",
        ));
    }
    let (method, target) = (method.to_owned(), target.to_owned());

    let headers = read_fields(reader).await?;
    Ok(Head {
        method,
        target,
        headers,
    })
}

/// Reads the body that `head` announces. Call it only after [`read_head`] on the same reader.
pub(crate) async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    head: &Head,
) -> Result<Vec<u8>, ReadError> {
    match head.framing()? {
        Framing::Length(length) => {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .await
                .map_err(|_| ReadError::Closed)?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(reader).await,
    }
}

async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader).await?.ok_or(ReadError::Closed)?;
        // Chunk extensions (`;name=value`) carry nothing the mock needs.
        let size = line.split(';').next().unwrap_or_default().trim();
        if size.is_empty() || !size.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(ReadError::Malformed("invalid chunk size"));
        }
        let size =
            usize::from_str_radix(size, 16).map_err(|_| ReadError::TooLarge("chunk too large"))?;
        if size == 0 {
            break;
        }
        if size > MAX_BODY - body.len() {
            return Err(ReadError::TooLarge("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .await
            .map_err(|_| ReadError::Closed)?;
        let end = read_line(reader).await?.ok_or(ReadError::Closed)?;
        if !end.is_empty() {
            return Err(ReadError::Malformed("chunk data longer than its size"));
        }
    }
    // Trailer fields have the header syntax and are ignored.
    read_fields(reader).await?;
    Ok(body)
}

/// Reads `name: value` lines up to the empty line that ends them.
async fn read_fields<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Vec<(String, String)>, ReadError> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(reader).await?.ok_or(ReadError::Closed)?;
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() == MAX_HEADERS {
            return Err(ReadError::TooLarge("too many header fields"));
        }
        if line.starts_with([' ', '\t']) {
            return Err(ReadError::Malformed("obsolete header line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("header line without a colon"));
        };
        if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ReadError::Malformed("invalid header name"));
        }
        fields.push((
            name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }
}

/// Reads one line without its CRLF (a bare LF is accepted too). `None` means the stream ended
/// cleanly before the line started.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    // Room for MAX_LINE bytes plus CRLF; one byte more proves the line is too long.
    let limit = MAX_LINE as u64 + 3;
    let read = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|_| ReadError::Closed)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if read as u64 == limit {
            ReadError::TooLarge("line too long")
        } else {
            ReadError::Closed
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > MAX_LINE {
        return Err(ReadError::TooLarge("line too long"));
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<(Head, Vec<u8>), ReadError> {
        let mut reader = bytes;
        let head = read_head(&mut reader).await?;
        let body = read_body(&mut reader, &head).await?;
        Ok((head, body))
    }

    #[tokio::test]
    async fn a_content_length_request_is_parsed() {
        let (head, body) = read(
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Empty:\r\n\r\nhelloEXTRA",
        )
        .await
        .expect("request");
        assert_eq!(head.method, "POST");
        assert_eq!(head.path(), "/v1/chat/completions");
        assert_eq!(head.header("host"), Some("a"));
        assert_eq!(head.header("x-empty"), Some(""));
        assert_eq!(body, b"hello");
    }

    #[tokio::test]
    async fn a_chunked_request_with_extensions_and_trailers_is_decoded() {
        let (_, body) = read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n\
              3;ext=1\r\n{\"a\r\nC\r\n\": \"b\\n\"}   \r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await
        .expect("request");
        assert_eq!(body, b"{\"a\": \"b\\n\"}   ");
    }

    #[tokio::test]
    async fn bare_line_feeds_and_a_leading_empty_line_are_tolerated() {
        let (head, body) = read(b"\r\nGET /x HTTP/1.0\nContent-Length: 2\n\nok")
            .await
            .expect("request");
        assert_eq!(head.target, "/x");
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn a_request_without_a_body_has_an_empty_body() {
        let (_, body) = read(b"GET / HTTP/1.1\r\n\r\n").await.expect("request");
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn malformed_requests_are_rejected_without_panicking() {
        let cases: &[&[u8]] = &[
            b"garbage\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n",
        ];
        for case in cases {
            let result = read(case).await;
            assert!(
                matches!(result, Err(ReadError::Malformed(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[tokio::test]
    async fn oversized_requests_are_rejected_before_allocating() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE));
        let many_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let huge_length = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let overflowing_length =
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        let huge_chunk =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n";
        for case in [
            long_line.as_str(),
            many_headers.as_str(),
            huge_length.as_str(),
            overflowing_length,
            huge_chunk,
        ] {
            let result = read(case.as_bytes()).await;
            assert!(
                matches!(result, Err(ReadError::TooLarge(_))),
                "{} gave {result:?}",
                &case[..case.len().min(60)]
            );
        }
    }

    #[tokio::test]
    async fn truncated_requests_count_as_closed() {
        let cases: &[&[u8]] = &[
            b"",
            b"POST / HT",
            b"POST / HTTP/1.1\r\nHost: a\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ];
        for case in cases {
            let result = read(case).await;
            assert!(
                matches!(result, Err(ReadError::Closed)),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let target = format!("/{}", "a".repeat(MAX_LINE - "GET  HTTP/1.1".len() - 1));
        let request = format!("GET {target} HTTP/1.1\r\n\r\n");
        let (head, _) = read(request.as_bytes()).await.expect("request");
        assert_eq!(head.target, target);
    }
}
