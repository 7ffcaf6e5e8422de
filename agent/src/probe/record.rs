//! A transparent wrapper around a probe's connection that records what really
//! happened on the wire: when the first response byte arrived (curl's
//! `time_starttransfer`), how many bytes came, the first bytes themselves
//! (so a middlebox's junk or block page is kept as evidence even when it is
//! not HTTP), whether the peer closed cleanly or reset, and whether writing
//! failed. The outcome is decided from these events, never from error text.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the wire saw.
#[derive(Debug, Default, Clone)]
pub struct WireEvents {
    /// When the first byte was read.
    pub first_byte_at: Option<Instant>,
    /// Bytes read in all.
    pub bytes_read: u64,
    /// Bytes written in all.
    pub bytes_written: u64,
    /// The first bytes read (bounded).
    pub head: Vec<u8>,
    /// The peer closed the stream (read returned 0).
    pub eof: bool,
    /// The kind of the first read error, if any.
    pub read_error: Option<io::ErrorKind>,
    /// The kind of the first write error, if any.
    pub write_error: Option<io::ErrorKind>,
}

/// Shared view of a [`Recorder`]'s events (the stream itself moves into hyper).
#[derive(Debug, Clone)]
pub struct Events {
    inner: Arc<Mutex<WireEvents>>,
    keep: usize,
}

impl Events {
    /// A snapshot of the events so far.
    pub fn snapshot(&self) -> WireEvents {
        self.inner.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// When the first byte was read (cheaper than a snapshot on the hot path).
    pub fn first_byte_at(&self) -> Option<Instant> {
        self.inner.lock().ok().and_then(|e| e.first_byte_at)
    }

    fn update(&self, f: impl FnOnce(&mut WireEvents)) {
        if let Ok(mut events) = self.inner.lock() {
            f(&mut events);
        }
    }
}

/// The recording wrapper.
#[derive(Debug)]
pub struct Recorder<S> {
    stream: S,
    events: Events,
}

impl<S> Recorder<S> {
    /// Wraps `stream`, keeping at most `keep` first bytes.
    pub fn new(stream: S, keep: usize) -> (Self, Events) {
        let events = Events {
            inner: Arc::default(),
            keep,
        };
        (
            Recorder {
                stream,
                events: events.clone(),
            },
            events,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                let keep = this.events.keep;
                this.events.update(|e| {
                    if fresh.is_empty() {
                        e.eof = true;
                    } else {
                        e.first_byte_at.get_or_insert_with(Instant::now);
                        e.bytes_read += fresh.len() as u64;
                        let room = keep.saturating_sub(e.head.len());
                        e.head.extend_from_slice(&fresh[..room.min(fresh.len())]);
                    }
                });
            }
            Poll::Ready(Err(err)) => {
                let kind = err.kind();
                this.events.update(|e| {
                    e.read_error.get_or_insert(kind);
                });
            }
            Poll::Pending => {}
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, data);
        match &poll {
            Poll::Ready(Ok(n)) => {
                let n = *n as u64;
                this.events.update(|e| e.bytes_written += n);
            }
            Poll::Ready(Err(err)) => {
                let kind = err.kind();
                this.events.update(|e| {
                    e.write_error.get_or_insert(kind);
                });
            }
            Poll::Pending => {}
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn records_bytes_head_and_eof() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut rec, events) = Recorder::new(client, 4);
        rec.write_all(b"GET").await.unwrap();
        server.write_all(b"HTTP/1.1").await.unwrap();
        drop(server);
        let mut all = Vec::new();
        rec.read_to_end(&mut all).await.unwrap();
        let seen = events.snapshot();
        assert_eq!(seen.bytes_written, 3);
        assert_eq!(seen.bytes_read, 8);
        assert_eq!(seen.head, b"HTTP");
        assert!(seen.eof && seen.first_byte_at.is_some());
        assert!(seen.read_error.is_none());
    }
}
