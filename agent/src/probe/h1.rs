//! The engine's own HTTP/1.1 exchange for its one-request connections: it
//! writes the curl-shaped head from [`super::head`] as it is, reads the
//! response head with `httparse`, and reads the body by the framing
//! RFC 9112 §6.3 gives it (none, `Content-Length`, chunked, or until the
//! peer closes).
//!
//! Why not hyper's client here: a probe sends one request per connection,
//! and hyper's per-connection machinery (its dispatch channel, its 8 KiB
//! read buffer, the request and response types) was about a third of the
//! shipped probe's user CPU, taken from the origin it measures on the same
//! host. This reader allocates one small buffer per connection and grows
//! it only for large heads or bodies. HTTP/2 still runs on hyper.
//!
//! Its failures are [`HttpFault`]s of the same classes hyper's errors map
//! onto, so [`super::classify`] names them the same way; the tests below
//! check that on every reply the classifier's fuzzing uses.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vantage_proto::pb;

use super::classify::{HttpFault, HttpFaultKind};

/// Header lines parsed without a heap allocation (hyper's limit).
const USUAL_HEADERS: usize = 100;
/// Header lines parsed at most; curl has no count limit, only a size one,
/// so a head with many short lines is read as long as it is not absurd.
const MAX_HEADERS: usize = 1000;
/// First size of the read buffer. Below glibc's per-thread cache limit, so
/// a small reply (the common probe) costs no large allocation.
const INITIAL_BUFFER: usize = 1024;
/// The read buffer doubles up to this while reads keep filling it.
const MAX_BODY_BUFFER: usize = 64 * 1024;
/// Longest chunk-size line accepted (with extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes the connection.
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
pub(super) struct Head {
    /// The status code (100–999).
    pub(super) status: u16,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub(super) version: &'static str,
    /// Every header in wire order, names lower-cased (as HTTP/2 and hyper
    /// name them, so rules match one spelling).
    pub(super) headers: Vec<pb::Header>,
    /// How the body is delimited.
    pub(super) framing: Framing,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Where the body reader is.
#[derive(Debug, Clone, Copy)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// One connection: the stream and the bytes read but not yet consumed.
#[derive(Debug)]
pub(super) struct Connection<S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
    body: BodyState,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected (and, for HTTPS, handshaken) stream.
    pub(super) fn new(io: S) -> Self {
        Connection {
            io,
            buf: Vec::with_capacity(INITIAL_BUFFER),
            pos: 0,
            body: BodyState::Done,
        }
    }

    /// Writes the request head as given, byte for byte.
    pub(super) async fn send(&mut self, head: &[u8]) -> Result<(), HttpFault> {
        let sent = async {
            self.io.write_all(head).await?;
            self.io.flush().await
        };
        sent.await.map_err(|e| HttpFault::io(&e, e.to_string()))
    }

    /// Reads the final response head (skipping interim 1xx answers but
    /// 101), at most `max_head` bytes of it. `head_request` says the
    /// request was HEAD, whose answer has no body whatever it announces.
    pub(super) async fn read_head(
        &mut self,
        max_head: usize,
        head_request: bool,
    ) -> Result<Head, HttpFault> {
        loop {
            if self.pos < self.buf.len() {
                let mut usual = [httparse::EMPTY_HEADER; USUAL_HEADERS];
                let mut parsed = parse_head(&self.buf[self.pos..], &mut usual, head_request);
                if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
                    let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
                    parsed = parse_head(&self.buf[self.pos..], &mut many, head_request);
                }
                match parsed {
                    Ok(Some((used, head))) => {
                        let head = head?;
                        self.pos += used;
                        if (100..200).contains(&head.status) && head.status != 101 {
                            continue;
                        }
                        self.body = match head.framing {
                            Framing::Empty | Framing::Length(0) => BodyState::Done,
                            Framing::Length(n) => BodyState::Length(n),
                            Framing::Chunked => BodyState::Chunked(Chunk::Size),
                            Framing::UntilClose => BodyState::UntilClose,
                        };
                        return Ok(head);
                    }
                    Ok(None) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(HttpFault::new(
                            HttpFaultKind::TooLarge,
                            format!("more than {MAX_HEADERS} header lines"),
                        ))
                    }
                    Err(e) => {
                        return Err(HttpFault::new(
                            HttpFaultKind::Parse,
                            format!("invalid response head: {e}"),
                        ))
                    }
                }
            }
            if self.buf.len() - self.pos >= max_head {
                return Err(HttpFault::new(
                    HttpFaultKind::TooLarge,
                    format!("response head over {max_head} bytes"),
                ));
            }
            match self.fill().await {
                Ok(0) => {
                    return Err(HttpFault::new(
                        HttpFaultKind::Incomplete,
                        "connection closed before the response head was complete",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(HttpFault::io(&e, format!("reading the response head: {e}"))),
            }
        }
    }

    /// The next piece of the body, or `None` at its end.
    pub(super) async fn next_body_chunk(&mut self) -> Result<Option<&[u8]>, HttpFault> {
        loop {
            match self.body {
                BodyState::Done => return Ok(None),
                BodyState::Length(left) => {
                    if self.pos == self.buf.len() {
                        self.fill_body().await?;
                    }
                    let take = self.take(left);
                    let left = left - take as u64;
                    self.body = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Ok(Some(self.taken(take)));
                }
                BodyState::UntilClose => {
                    if self.pos == self.buf.len() {
                        match self.fill().await {
                            Ok(0) => {
                                self.body = BodyState::Done;
                                return Ok(None);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                return Err(HttpFault::io(&e, format!("reading the body: {e}")))
                            }
                        }
                    }
                    let take = self.take(u64::MAX);
                    return Ok(Some(self.taken(take)));
                }
                BodyState::Chunked(Chunk::Size) => {
                    match httparse::parse_chunk_size(&self.buf[self.pos..]) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            self.pos += used;
                            self.body = BodyState::Chunked(if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            });
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.buf.len() - self.pos > MAX_CHUNK_LINE {
                                return Err(bad_chunk("chunk size line too long"));
                            }
                            self.fill_body().await?;
                        }
                        Err(_) => return Err(bad_chunk("invalid chunk size line")),
                    }
                }
                BodyState::Chunked(Chunk::Data(left)) => {
                    if self.pos == self.buf.len() {
                        self.fill_body().await?;
                    }
                    let take = self.take(left);
                    let left = left - take as u64;
                    self.body = BodyState::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(self.taken(take)));
                }
                BodyState::Chunked(Chunk::DataEnd) => {
                    let unread = &self.buf[self.pos..];
                    if unread.len() < 2 && b"\r\n".starts_with(unread) {
                        self.fill_body().await?;
                    } else if unread.starts_with(b"\r\n") {
                        self.pos += 2;
                        self.body = BodyState::Chunked(Chunk::Size);
                    } else {
                        return Err(bad_chunk("chunk data not followed by CRLF"));
                    }
                }
                BodyState::Chunked(Chunk::Trailers) => {
                    let unread = &self.buf[self.pos..];
                    if unread.starts_with(b"\r\n") {
                        self.pos += 2;
                        self.body = BodyState::Done;
                    } else if let Some(end) = find(unread, b"\r\n\r\n") {
                        self.pos += end + 4;
                        self.body = BodyState::Done;
                    } else if unread.len() > MAX_CHUNK_LINE * 4 {
                        return Err(bad_chunk("trailer section too long"));
                    } else {
                        self.fill_body().await?;
                    }
                }
            }
        }
    }

    /// How many unread bytes to hand out, at most `limit`.
    fn take(&self, limit: u64) -> usize {
        let avail = self.buf.len() - self.pos;
        usize::try_from(limit).map_or(avail, |limit| limit.min(avail))
    }

    /// Consumes `n` unread bytes and lends them out.
    fn taken(&mut self, n: usize) -> &[u8] {
        let from = self.pos;
        self.pos += n;
        &self.buf[from..from + n]
    }

    /// Reads more of the body; the peer closing before the body's end is a
    /// cut-short body.
    async fn fill_body(&mut self) -> Result<(), HttpFault> {
        match self.fill().await {
            Ok(0) => Err(HttpFault::new(
                HttpFaultKind::Incomplete,
                "connection closed before the end of the body",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(HttpFault::io(&e, format!("reading the body: {e}"))),
        }
    }

    /// Reads once into the buffer's free room, first dropping consumed
    /// bytes, and doubling the room when the buffer is full.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            // Full of unread bytes (a head longer than the buffer): double.
            let grow = self.buf.capacity().max(INITIAL_BUFFER);
            self.buf.reserve(grow);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = self.io.read_buf(&mut self.buf).await?;
        if read == room && self.buf.capacity() < MAX_BODY_BUFFER {
            // The peer had more than the room: a larger body. Double the
            // room for the next read, up to the cap, so a large body is
            // not read a kilobyte per call.
            let target = (self.buf.capacity() * 2).min(MAX_BODY_BUFFER);
            self.buf.reserve_exact(target - self.buf.len());
        }
        Ok(read)
    }
}

/// A complete head: the bytes it used and its meaning (or why it has none).
type Parsed = (usize, Result<Head, HttpFault>);

/// Parses a complete head out of `bytes` into `lines`: `None` while it is
/// incomplete, else the bytes it used and its meaning.
fn parse_head<'b>(
    bytes: &'b [u8],
    lines: &mut [httparse::Header<'b>],
    head_request: bool,
) -> Result<Option<Parsed>, httparse::Error> {
    let mut response = httparse::Response::new(lines);
    Ok(match response.parse(bytes)? {
        httparse::Status::Complete(used) => Some((used, parsed_head(&response, head_request))),
        httparse::Status::Partial => None,
    })
}

fn bad_chunk(detail: &str) -> HttpFault {
    HttpFault::new(HttpFaultKind::Other, detail.to_string())
}

/// The head's meaning: status, version, headers and framing.
fn parsed_head(
    response: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<Head, HttpFault> {
    let status = response.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(HttpFault::new(
            HttpFaultKind::Parse,
            format!("invalid status code {status}"),
        ));
    }
    let version = if response.version == Some(0) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut chunked = false;
    let mut has_transfer_encoding = false;
    let mut length: Option<u64> = None;
    let mut overflow = false;
    let mut headers = Vec::with_capacity(response.headers.len());
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            has_transfer_encoding = true;
            // Only the last coding decides (RFC 9112 §6.3): chunked must be final.
            chunked = last_token(header.value).eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            for piece in header.value.split(|b| *b == b',') {
                let value = content_length(piece.trim_ascii()).ok_or_else(|| {
                    HttpFault::new(HttpFaultKind::Parse, "invalid Content-Length")
                })?;
                let Some(value) = value else {
                    overflow = true;
                    continue;
                };
                if length.is_some_and(|seen| seen != value) {
                    return Err(HttpFault::new(
                        HttpFaultKind::Parse,
                        "conflicting Content-Length values",
                    ));
                }
                length = Some(value);
            }
        }
        headers.push(pb::Header {
            name: header.name.to_ascii_lowercase(),
            value: header.value.to_vec(),
        });
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if has_transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let (Some(n), false) = (length, overflow) {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Head {
        status,
        version,
        headers,
        framing,
    })
}

/// A Content-Length value: decimal digits only. A value beyond curl's
/// 63-bit file offsets is ignored as curl ignores it ("overflow
/// content-length"): the body then runs until the peer closes.
fn content_length(digits: &[u8]) -> Option<Option<u64>> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = std::str::from_utf8(digits).ok()?.parse::<u64>().ok();
    Some(value.filter(|n| i64::try_from(*n).is_ok()))
}

/// The last comma-separated token of a header value, trimmed.
fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::super::testing::Peer;
    use super::*;

    async fn exchange(
        reply: &[u8],
        step: usize,
        head_request: bool,
    ) -> Result<(Head, Vec<u8>), HttpFault> {
        let mut conn = Connection::new(Peer::new(reply, None).in_steps_of(step));
        conn.send(b"GET / HTTP/1.1\r\n\r\n").await?;
        let head = conn.read_head(8192, head_request).await?;
        let mut body = Vec::new();
        while let Some(piece) = conn.next_body_chunk().await? {
            body.extend_from_slice(piece);
        }
        Ok((head, body))
    }

    fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(fut)
    }

    #[test]
    fn bodies_are_read_by_their_framing_whatever_the_read_sizes() {
        let cases: [(&[u8], bool, u16, &[u8]); 8] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, 200, b"hello"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: y\r\n\r\n",
                false,
                200,
                b"hello",
            ),
            (b"HTTP/1.0 200 OK\r\n\r\nhello", false, 200, b"hello"),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", false, 201, b"ok"),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, 204, b""),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 200, b""),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nab", false, 200, b"ab"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nabc", false, 200, b"abc"),
        ];
        for (reply, head_request, status, body) in cases {
            for step in [1, 3, 7, reply.len()] {
                let (head, got) = run(exchange(reply, step, head_request)).unwrap_or_else(|e| {
                    panic!(
                        "{:?} in steps of {step}: {e:?}",
                        String::from_utf8_lossy(reply)
                    )
                });
                assert_eq!(head.status, status);
                assert_eq!(
                    got,
                    body,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(reply)
                );
            }
        }
    }

    #[test]
    fn headers_keep_wire_order_with_lower_case_names() {
        let reply = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nEO-LOG-UUID: 42\r\nSet-Cookie: a\r\nSet-Cookie: b\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = run(exchange(reply, reply.len(), false)).expect("valid reply");
        let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "server",
                "eo-log-uuid",
                "set-cookie",
                "set-cookie",
                "content-length"
            ]
        );
        assert_eq!(head.version, "HTTP/1.1");
    }

    #[test]
    fn a_large_body_is_read_in_growing_pieces() {
        let body = vec![b'x'; 300_000];
        let reply = [
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            &body,
        ]
        .concat();
        run(async {
            let mut conn = Connection::new(Peer::new(&reply, None));
            conn.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            conn.read_head(8192, false).await.unwrap();
            let (mut total, mut pieces) = (0, 0);
            while let Some(piece) = conn.next_body_chunk().await.unwrap() {
                total += piece.len();
                pieces += 1;
            }
            assert_eq!(total, body.len());
            // 1 KiB reads would take 293 pieces; doubling to 64 KiB takes ~12.
            assert!(pieces < 20, "{pieces} pieces");
            assert_eq!(conn.buf.capacity(), MAX_BODY_BUFFER);
        });
    }

    #[test]
    fn many_short_header_lines_are_read_like_curl_reads_them() {
        let lines = b"X-A: b\r\n".repeat(300);
        let reply = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".as_slice(),
            &lines,
            b"\r\nok",
        ]
        .concat();
        let (head, body) = run(exchange(&reply, 64, false)).expect("300 header lines");
        assert_eq!(head.headers.len(), 301);
        assert_eq!(body, b"ok");
        let lines = b"X-A: b\r\n".repeat(MAX_HEADERS + 1);
        let reply = [b"HTTP/1.1 200 OK\r\n".as_slice(), &lines, b"\r\n"].concat();
        let err = run(exchange(&reply, reply.len(), false)).expect_err("too many lines");
        assert_eq!(err.kind, HttpFaultKind::TooLarge);
    }

    #[test]
    fn broken_replies_fail_with_their_class() {
        let cases: [(&[u8], HttpFaultKind); 6] = [
            (b"", HttpFaultKind::Incomplete),
            (b"HTTP/1.1 200 OK\r\nX-Cut", HttpFaultKind::Incomplete),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", HttpFaultKind::Parse),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpFaultKind::Parse,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                HttpFaultKind::Incomplete,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                HttpFaultKind::Other,
            ),
        ];
        for (reply, kind) in cases {
            let err = run(exchange(reply, reply.len().max(1), false))
                .expect_err(&String::from_utf8_lossy(reply));
            assert_eq!(
                err.kind,
                kind,
                "{:?}: {err:?}",
                String::from_utf8_lossy(reply)
            );
        }
        let huge = [b"HTTP/1.1 200 OK\r\nX-Big: ".as_slice(), &[b'a'; 20_000]].concat();
        let err = run(exchange(&huge, 4096, false)).expect_err("huge head");
        assert_eq!(err.kind, HttpFaultKind::TooLarge);
    }
}
