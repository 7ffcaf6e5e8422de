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

/// Property-based fuzzing of the recorder: any sequence of reads (any
/// chunking, buffers of any size already partly filled, a peer that stalls,
/// closes or fails) and writes (short writes, errors) is passed through
/// unchanged and recorded exactly, with the kept head bounded.
#[cfg(test)]
mod fuzz {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// What a read from the scripted peer does next.
    #[derive(Debug, Clone)]
    enum Step {
        Data(Vec<u8>),
        Stall,
        Fail(io::ErrorKind),
    }

    /// A peer that plays `steps`, then reports end of stream forever; a
    /// write accepts at most the next budget's bytes, or fails, or stalls.
    struct Script {
        steps: VecDeque<Step>,
        writes: VecDeque<Option<Result<usize, io::ErrorKind>>>,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.steps.front_mut() {
                None => Poll::Ready(Ok(())),
                Some(Step::Stall) => {
                    self.steps.pop_front();
                    Poll::Pending
                }
                Some(Step::Fail(kind)) => {
                    let kind = *kind;
                    self.steps.pop_front();
                    Poll::Ready(Err(kind.into()))
                }
                Some(Step::Data(data)) => {
                    let n = data.len().min(buf.remaining());
                    buf.put_slice(&data[..n]);
                    data.drain(..n);
                    if data.is_empty() {
                        self.steps.pop_front();
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.writes.pop_front() {
                None => Poll::Ready(Ok(data.len())),
                Some(None) => Poll::Pending,
                Some(Some(Ok(budget))) => Poll::Ready(Ok(budget.min(data.len()))),
                Some(Some(Err(kind))) => Poll::Ready(Err(kind.into())),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn kind() -> impl Strategy<Value = io::ErrorKind> {
        proptest::sample::select(vec![
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::InvalidData,
            io::ErrorKind::Other,
        ])
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            // Never empty: an empty read is how a stream says it ended.
            8 => proptest::collection::vec(any::<u8>(), 1..700).prop_map(Step::Data),
            1 => Just(Step::Stall),
            1 => kind().prop_map(Step::Fail),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn reads_are_passed_through_and_recorded(
            steps in proptest::collection::vec(step(), 0..12),
            // (room for fresh bytes, bytes the caller's buffer already held)
            reads in proptest::collection::vec((1usize..1024, 0usize..64), 0..48),
            keep in prop_oneof![0usize..16, 0usize..5000],
        ) {
            let script = Script { steps: steps.iter().cloned().collect(), writes: VecDeque::new() };
            let sent: Vec<u8> = steps
                .iter()
                .filter_map(|s| match s { Step::Data(d) => Some(d.as_slice()), _ => None })
                .flatten()
                .copied()
                .collect();
            let (mut recorder, events) = Recorder::new(script, keep);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut got = Vec::new();
            let mut eof = false;
            let mut first_error = None;
            for (room, held) in reads {
                let mut storage = vec![0u8; held + room];
                let mut buf = ReadBuf::new(&mut storage);
                buf.put_slice(&vec![0xA5; held]);
                match Pin::new(&mut recorder).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let fresh = &buf.filled()[held..];
                        eof |= fresh.is_empty();
                        got.extend_from_slice(fresh);
                    }
                    Poll::Ready(Err(e)) => {
                        first_error.get_or_insert(e.kind());
                    }
                    Poll::Pending => {}
                }
            }
            let seen = events.snapshot();
            prop_assert!(sent.starts_with(&got), "the recorder altered the data");
            prop_assert_eq!(seen.bytes_read, got.len() as u64);
            prop_assert_eq!(&seen.head[..], &got[..got.len().min(keep)]);
            prop_assert!(seen.head.len() <= keep);
            prop_assert_eq!(seen.first_byte_at.is_some(), !got.is_empty());
            prop_assert_eq!(seen.eof, eof);
            prop_assert_eq!(seen.read_error, first_error);
            prop_assert_eq!(events.first_byte_at(), seen.first_byte_at);
        }

        #[test]
        fn writes_are_passed_through_and_counted(
            writes in proptest::collection::vec(
                prop_oneof![
                    6 => (0usize..600).prop_map(|n| Some(Ok(n))),
                    1 => Just(None),
                    1 => kind().prop_map(|k| Some(Err(k))),
                ],
                0..24,
            ),
            sizes in proptest::collection::vec(0usize..800, 0..24),
        ) {
            let script = Script { steps: VecDeque::new(), writes: writes.into_iter().collect() };
            let (mut recorder, events) = Recorder::new(script, 16);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut written = 0u64;
            let mut first_error = None;
            for size in sizes {
                let data = vec![7u8; size];
                match Pin::new(&mut recorder).poll_write(&mut cx, &data) {
                    Poll::Ready(Ok(n)) => {
                        prop_assert!(n <= size);
                        written += n as u64;
                    }
                    Poll::Ready(Err(e)) => {
                        first_error.get_or_insert(e.kind());
                    }
                    Poll::Pending => {}
                }
            }
            let seen = events.snapshot();
            prop_assert_eq!(seen.bytes_written, written);
            prop_assert_eq!(seen.write_error, first_error);
            prop_assert_eq!(seen.bytes_read, 0);
            prop_assert!(!seen.eof && seen.head.is_empty());
        }
    }
}
