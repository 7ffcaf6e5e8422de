//! The HTTP/1.1 request head exactly as curl shapes it (DESIGN §4 "On the
//! wire"): the request line, `Host`, `User-Agent`, `Accept: */*`, then the
//! spec's extra headers in their order and letter case, then `\r\n`.
//!
//! Middleboxes match bytes (`Host: www.example.com`), so a probe whose head
//! differs from a browser's or curl's in case or order can slip past a
//! carrier rule that curl trips — the probe must be the traffic it stands
//! for. hyper writes header names in lower case (or Title-Case), so hyper
//! still parses the response, but the head it writes is swapped on the way
//! out by [`ShapedHead`] for the one rendered here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Renders the request head curl would send for `method target` to
/// `authority` with `user_agent` and `extra` headers (`-H`).
///
/// curl's rules for overrides are kept: an extra `Host` takes the place of
/// curl's own (first line after the request line); an extra `User-Agent` or
/// `Accept` replaces curl's, at the extra header's own position.
pub fn render(
    method: &str,
    target: &str,
    authority: &str,
    user_agent: &str,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let has = |name: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = Vec::with_capacity(128 + extra.len() * 48);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    match extra.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")) {
        Some((name, value)) => push_header(&mut head, name, value),
        None => push_header(&mut head, "Host", authority.as_bytes()),
    }
    if !has("user-agent") && !user_agent.is_empty() {
        push_header(&mut head, "User-Agent", user_agent.as_bytes());
    }
    if !has("accept") {
        push_header(&mut head, "Accept", b"*/*");
    }
    for (name, value) in extra {
        if !name.eq_ignore_ascii_case("host") {
            push_header(&mut head, name, value);
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Where the first request head is in its way out.
#[derive(Debug)]
enum State {
    /// hyper is still writing its head: swallow it up to the blank line;
    /// `tail` holds the last bytes seen, so a terminator split across two
    /// writes is still found.
    Swallow { tail: Vec<u8> },
    /// Our head is being written; `sent` bytes of it are out.
    Sending { head: Vec<u8>, sent: usize },
    /// Everything else passes through untouched.
    Through,
}

/// Wraps a connection so that the first HTTP/1.1 request head written to it
/// (by hyper) goes out as `head` instead; all later bytes, and every read,
/// pass through.
#[derive(Debug)]
pub struct ShapedHead<S> {
    stream: S,
    head: Option<Vec<u8>>,
    state: State,
}

impl<S> ShapedHead<S> {
    /// Sends `head` in place of the first request head written.
    pub fn new(stream: S, head: Vec<u8>) -> Self {
        ShapedHead {
            stream,
            head: Some(head),
            state: State::Swallow { tail: Vec::new() },
        }
    }
}

/// The end (exclusive) of the first `\r\n\r\n` in `tail ++ data`, as an
/// offset into `data`. `tail` holds at most 3 bytes, so only the seam
/// between the two is copied; `data` itself is searched in place.
fn head_end(tail: &[u8], data: &[u8]) -> Option<usize> {
    let mut seam = tail.to_vec();
    seam.extend_from_slice(&data[..data.len().min(3)]);
    if let Some(at) = seam.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(at + 4 - tail.len());
    }
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

impl<S: AsyncWrite + Unpin> ShapedHead<S> {
    /// Pushes out what is left of our head; Ready(Ok) once it is all out.
    fn poll_send_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let State::Sending { head, sent } = &mut self.state {
            if *sent == head.len() {
                self.state = State::Through;
                break;
            }
            match Pin::new(&mut self.stream).poll_write(cx, &head[*sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ShapedHead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ShapedHead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Swallow { tail } = &mut this.state {
            match head_end(tail, data) {
                None => {
                    // Keep the last 3 bytes seen: a terminator may span writes.
                    tail.extend_from_slice(&data[data.len().saturating_sub(3)..]);
                    let excess = tail.len().saturating_sub(3);
                    tail.drain(..excess);
                    // hyper's head is accepted (and dropped): ours replaces it.
                    return Poll::Ready(Ok(data.len()));
                }
                Some(end) => {
                    let head = this.head.take().unwrap_or_default();
                    this.state = State::Sending { head, sent: 0 };
                    // Accept hyper's head; whatever follows it (a body)
                    // comes in the next write, after ours is out.
                    return Poll::Ready(Ok(end));
                }
            }
        }
        match this.poll_send_head(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_write(cx, data),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_head(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_head(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn renders_curls_default_order_and_case() {
        let head = render(
            "GET",
            "/a?x=1",
            "www.example.com",
            "curl/8.0",
            &[("EO-Connecting-IP", b"1.2.3.4"), ("x-lower", b"v")],
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a?x=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.0\r\n\
             Accept: */*\r\nEO-Connecting-IP: 1.2.3.4\r\nx-lower: v\r\n\r\n"
        );
    }

    #[test]
    fn overrides_follow_curl() {
        let head = render(
            "GET",
            "/",
            "a.test",
            "ua",
            &[
                ("X-A", b"1"),
                ("accept", b"text/html"),
                ("HOST", b"b.test"),
                ("User-Agent", b"mine"),
            ],
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nHOST: b.test\r\nX-A: 1\r\naccept: text/html\r\nUser-Agent: mine\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn the_first_head_is_swapped_and_the_rest_passes() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut shaped = ShapedHead::new(client, b"OURS\r\n\r\n".to_vec());
        // hyper's head, split so the terminator straddles two writes.
        shaped
            .write_all(b"get / http/1.1\r\nhost: x\r\n\r")
            .await
            .unwrap();
        shaped.write_all(b"\nBODY").await.unwrap();
        shaped.flush().await.unwrap();
        drop(shaped);
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"OURS\r\n\r\nBODY");
    }

    #[test]
    fn terminator_search_spans_writes() {
        assert_eq!(head_end(b"\r\n\r", b"\nxy"), Some(1));
        assert_eq!(head_end(b"", b"a\r\n\r\nb"), Some(5));
        assert_eq!(head_end(b"ab", b"\r\n"), None);
    }
}
