//! Test doubles for the probe engine's HTTP layers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A peer that, once a request head has been written to it, sends `reply`
/// (in reads of at most `step` bytes), then closes or fails with `end`.
/// Like a server, it says nothing before the request: a client that reads
/// early waits.
#[derive(Debug)]
pub(super) struct Peer {
    reply: Vec<u8>,
    pos: usize,
    step: usize,
    end: Option<io::ErrorKind>,
    asked: bool,
    reader: Option<Waker>,
}

impl Peer {
    /// A peer answering `reply` then ending with `end` (`None`: a clean close).
    pub(super) fn new(reply: &[u8], end: Option<io::ErrorKind>) -> Self {
        Peer {
            reply: reply.to_vec(),
            pos: 0,
            step: usize::MAX,
            end,
            asked: false,
            reader: None,
        }
    }

    /// Hands the reply out at most `step` bytes per read.
    pub(super) fn in_steps_of(mut self, step: usize) -> Self {
        self.step = step.max(1);
        self
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if self.pos < self.reply.len() {
            let n = (self.reply.len() - self.pos)
                .min(buf.remaining())
                .min(self.step);
            let from = self.pos;
            buf.put_slice(&self.reply[from..from + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        match self.end {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Peer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.ends_with(b"\r\n\r\n") {
            self.asked = true;
            if let Some(reader) = self.reader.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
