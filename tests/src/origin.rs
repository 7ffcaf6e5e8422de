//! A loopback HTTP origin for the lab. It binds port 0, hands back its
//! address, counts the requests it answers (in total and per client address),
//! and can hold every request after the first N — or only one client's after
//! its first N — until the test releases it: that is how a test arranges for
//! an agent to be mid-plan at a precise moment without sleeping.
//!
//! (The fault-scripted origin of the probe-engine issue grows from here.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// The body every request gets.
pub const BODY: &str = "hello from the vantage lab origin\n";

/// Builds an [`Origin`].
#[derive(Debug, Default, Clone)]
pub struct OriginBuilder {
    hold_after: Option<u64>,
    hold_clients: HashMap<IpAddr, u64>,
    delay: Option<Duration>,
    addr: Option<SocketAddr>,
}

impl OriginBuilder {
    /// Answer the first `n` requests at once and hold the rest until
    /// [`Origin::release`].
    pub fn hold_after(mut self, n: u64) -> Self {
        self.hold_after = Some(n);
        self
    }

    /// Answer the first `n` requests from `client` at once and hold its
    /// later ones until [`Origin::release`]; other clients are not held by
    /// this (call it once per client to hold several). Lab regions are
    /// source addresses (`127.0.N.1`), so this stalls one region's agent at
    /// a precise point of its plan.
    pub fn hold_client_after(mut self, client: IpAddr, n: u64) -> Self {
        self.hold_clients.insert(client, n);
        self
    }

    /// Wait this long before answering each request (a slow origin).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Listen on `addr` instead of 127.0.0.1:0.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Binds (127.0.0.1:0 unless told otherwise) and starts serving.
    pub async fn spawn(self) -> anyhow::Result<Origin> {
        let listener = TcpListener::bind(
            self.addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            arrived: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            answered_changed: Notify::new(),
            hold_after: self.hold_after,
            hold_clients: self.hold_clients,
            per_client: Mutex::default(),
            delay: self.delay,
            release: watch::channel(false).0,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await?;
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let state = state.clone();
                        async move { state.answer(peer.ip()).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
        Ok(Origin { addr, state, task })
    }
}

struct State {
    arrived: AtomicU64,
    answered: AtomicU64,
    answered_changed: Notify,
    hold_after: Option<u64>,
    hold_clients: HashMap<IpAddr, u64>,
    /// Per client address: (arrived, answered).
    per_client: Mutex<HashMap<IpAddr, (u64, u64)>>,
    delay: Option<Duration>,
    release: watch::Sender<bool>,
}

impl State {
    /// Updates `client`'s counters; returns its arrived count afterwards.
    fn count_client(&self, client: IpAddr, arrived: u64, answered: u64) -> u64 {
        let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let entry = per_client.entry(client).or_default();
        entry.0 += arrived;
        entry.1 += answered;
        entry.0
    }

    async fn answer(
        &self,
        client: IpAddr,
    ) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
        let number = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        let from_client = self.count_client(client, 1, 0);
        let held_client = self
            .hold_clients
            .get(&client)
            .is_some_and(|limit| from_client > *limit);
        if held_client || self.hold_after.is_some_and(|limit| number > limit) {
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|open| *open).await;
        }
        if let Some(delay) = self.delay {
            // The delay is the fault being simulated, not synchronisation.
            tokio::time::sleep(delay).await;
        }
        let response = hyper::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
        self.count_client(client, 0, 1);
        self.answered.fetch_add(1, Ordering::SeqCst);
        self.answered_changed.notify_waiters();
        Ok(response)
    }
}

/// A running lab origin.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Origin {
    /// A builder with default behaviour (answer everything at once).
    pub fn builder() -> OriginBuilder {
        OriginBuilder::default()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests that have arrived.
    pub fn arrived(&self) -> u64 {
        self.state.arrived.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Requests that have arrived from `client` (answered or held).
    pub fn arrived_from(&self, client: IpAddr) -> u64 {
        self.client_counts(client).0
    }

    /// Requests from `client` answered so far.
    pub fn answered_from(&self, client: IpAddr) -> u64 {
        self.client_counts(client).1
    }

    fn client_counts(&self, client: IpAddr) -> (u64, u64) {
        let per_client = self
            .state
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        per_client.get(&client).copied().unwrap_or_default()
    }

    /// Lets every held request (and all later ones) through.
    pub fn release(&self) {
        let _ = self.state.release.send(true);
    }

    /// Waits until at least `n` requests were answered.
    pub async fn wait_answered(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.answered_changed.notified();
            if self.answered() >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!(
                    "origin answered {} of {n} requests within {timeout:?}",
                    self.answered()
                );
            }
        }
    }

    /// Waits until at least `n` requests from `client` were answered.
    pub async fn wait_answered_from(
        &self,
        client: IpAddr,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.answered_changed.notified();
            if self.answered_from(client) >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!(
                    "origin answered {} of {n} requests from {client} within {timeout:?}",
                    self.answered_from(client)
                );
            }
        }
    }

    /// Waits until at least `n` requests have arrived (answered or held).
    pub async fn wait_arrived(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        while self.arrived() < n {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} of {n} requests arrived within {timeout:?}",
                    self.arrived()
                );
            }
            ticker.tick().await;
        }
        Ok(())
    }

    /// Stops the origin; a panic inside it is re-raised here.
    pub async fn stop(self) {
        self.task.abort();
        if let Err(e) = self.task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}
