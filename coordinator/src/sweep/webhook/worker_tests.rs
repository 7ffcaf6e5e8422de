//! The outbox worker against a loopback receiver that scripts its answers
//! (fail, hang, redirect, accept) and an in-memory outbox: retries carry the
//! same id and body until a 2xx, a hang is cut by the timeout and retried,
//! redirects are not followed, and a private address is never contacted
//! unless allowed. Time is real but short (millisecond backoff); every wait
//! is bounded.

use std::collections::VecDeque;
use std::sync::Mutex;

use http_body_util::BodyExt as _;

use super::*;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answers (the worker's timeout must cut it).
    Hang,
    /// 302 to another path of the same receiver.
    Redirect,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    event_id: String,
    body: String,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback HTTP/1.1 receiver answering `script` in order, then 200.
async fn receiver(script: &[Answer]) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (seen, script) = (seen.clone(), script.clone());
                            async move {
                                let path = request.uri().path().to_string();
                                let event_id = request
                                    .headers()
                                    .get("x-vantage-event-id")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                let body = request.into_body().collect().await?.to_bytes();
                                seen.lock().unwrap().push(Seen {
                                    path,
                                    event_id,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                let answer = script
                                    .lock()
                                    .unwrap()
                                    .pop_front()
                                    .unwrap_or(Answer::Status(200));
                                let mut response = http::Response::builder();
                                match answer {
                                    Answer::Status(code) => response = response.status(code),
                                    Answer::Hang => std::future::pending::<()>().await,
                                    Answer::Redirect => {
                                        response =
                                            response.status(302).header("location", "/elsewhere")
                                    }
                                }
                                Ok::<_, hyper::Error>(
                                    response
                                        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    Receiver { addr, seen, task }
}

/// What the worker told the outbox.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Done,
    Retry { attempts: u32, error: String },
}

/// An outbox of deliveries kept in memory, as the store keeps them.
#[derive(Default)]
struct MemoryOutbox {
    queued: Mutex<Vec<(Delivery, i64, bool)>>,
    told: Mutex<Vec<Told>>,
    /// Looks at the due deliveries so far.
    polls: std::sync::atomic::AtomicUsize,
    changed: Notify,
}

impl MemoryOutbox {
    fn with(url: &str) -> Arc<Self> {
        let outbox = MemoryOutbox::default();
        outbox.queued.lock().unwrap().push((
            Delivery {
                event_id: "evt-1".into(),
                url: url.to_string(),
                body: r#"{"schema":"vantage.alert.v1","id":"evt-1"}"#.into(),
                attempts: 0,
            },
            0,
            false,
        ));
        Arc::new(outbox)
    }

    fn told(&self) -> Vec<Told> {
        self.told.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Outbox for MemoryOutbox {
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_one();
        Ok(self
            .queued
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at, done)| !done && *at <= now_ms)
            .take(limit as usize)
            .map(|(d, _, _)| d.clone())
            .collect())
    }

    async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .queued
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, done)| !done)
            .map(|(_, at, _)| *at)
            .min())
    }

    async fn delivery_done(
        &self,
        event_id: &str,
        url: &str,
        _at_ms: i64,
    ) -> Result<(), StoreError> {
        for (d, _, done) in self.queued.lock().unwrap().iter_mut() {
            if d.event_id == event_id && d.url == url {
                *done = true;
            }
        }
        self.told.lock().unwrap().push(Told::Done);
        self.changed.notify_one();
        Ok(())
    }

    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        for (d, at, _) in self.queued.lock().unwrap().iter_mut() {
            if d.event_id == event_id && d.url == url {
                d.attempts = attempts;
                *at = next_at_ms;
            }
        }
        self.told.lock().unwrap().push(Told::Retry {
            attempts,
            error: error.to_string(),
        });
        self.changed.notify_one();
        Ok(())
    }
}

fn config(allow_private: bool) -> WebhookConfig {
    WebhookConfig {
        policy: WebhookPolicy { allow_private },
        timeout: Duration::from_millis(300),
        backoff: BackoffConfig {
            min: Duration::from_millis(5),
            max: Duration::from_millis(20),
            jitter: 0.2,
        },
        poll: Duration::from_millis(50),
        ..WebhookConfig::default()
    }
}

/// Runs the worker until the outbox has been told `until` things (at most
/// 10 s); returns what it was told and the attempt results counted.
async fn run_until(
    outbox: Arc<MemoryOutbox>,
    config: WebhookConfig,
    until: impl Fn(&MemoryOutbox) -> bool,
) -> (Vec<Told>, Vec<DeliveryResult>) {
    let (stop, shutdown) = watch::channel(false);
    let results = Arc::new(Mutex::new(Vec::new()));
    let worker = tokio::spawn(run_outbox(
        outbox.clone(),
        config,
        Arc::new(Notify::new()),
        {
            let results = results.clone();
            move |r| results.lock().unwrap().push(r)
        },
        shutdown,
    ));
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !until(&outbox) {
            outbox.changed.notified().await;
        }
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops when told")
        .unwrap();
    assert!(
        waited.is_ok(),
        "the outbox never got there: {:?}",
        outbox.told()
    );
    let results = results.lock().unwrap().clone();
    (outbox.told(), results)
}

fn done(outbox: &MemoryOutbox) -> bool {
    outbox.told().contains(&Told::Done)
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_id_and_body_until_it_answers_2xx() {
    let receiver = receiver(&[Answer::Status(500), Answer::Status(503)]).await;
    let outbox = MemoryOutbox::with(&format!("http://{}/hook", receiver.addr));
    let (told, results) = run_until(outbox.clone(), config(true), done).await;

    assert_eq!(
        told,
        [
            Told::Retry {
                attempts: 1,
                error: "answered HTTP 500".into()
            },
            Told::Retry {
                attempts: 2,
                error: "answered HTTP 503".into()
            },
            Told::Done,
        ]
    );
    assert_eq!(
        results,
        [
            DeliveryResult::Failed,
            DeliveryResult::Failed,
            DeliveryResult::Delivered
        ]
    );
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        assert_eq!(s.event_id, "evt-1");
        assert_eq!(s.body, r#"{"schema":"vantage.alert.v1","id":"evt-1"}"#);
        assert_eq!(s.path, "/hook");
    }
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_by_the_timeout_and_retried() {
    let receiver = receiver(&[Answer::Hang]).await;
    let outbox = MemoryOutbox::with(&format!("http://{}/hook", receiver.addr));
    let (told, _) = run_until(outbox, config(true), done).await;
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        matches!(&told[0], Told::Retry { attempts: 1, error } if error.starts_with("timed out")),
        "{told:?}"
    );
    assert_eq!(told[1], Told::Done);
    assert_eq!(receiver.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let receiver = receiver(&[Answer::Redirect]).await;
    let outbox = MemoryOutbox::with(&format!("http://{}/hook", receiver.addr));
    let (told, _) = run_until(outbox, config(true), done).await;
    assert_eq!(
        told[0],
        Told::Retry {
            attempts: 1,
            error: "answered HTTP 302".into()
        }
    );
    let paths: Vec<String> = receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(paths, ["/hook", "/hook"], "/elsewhere is never asked for");
}

#[tokio::test]
async fn a_private_receiver_is_never_contacted_unless_allowed() {
    let receiver = receiver(&[]).await;
    let outbox = MemoryOutbox::with(&format!("http://{}/hook", receiver.addr));
    let (told, results) = run_until(outbox, config(false), |o| o.told().len() >= 2).await;
    assert!(
        told.iter().all(|t| matches!(t, Told::Retry { .. })),
        "{told:?}"
    );
    assert!(results.iter().all(|r| *r == DeliveryResult::Failed));
    assert!(
        receiver.seen.lock().unwrap().is_empty(),
        "no POST left the box"
    );
}

#[tokio::test]
async fn each_retry_waits_for_its_backoff() {
    let receiver = receiver(&[Answer::Status(500)]).await;
    let outbox = MemoryOutbox::with(&format!("http://{}/hook", receiver.addr));
    let mut slow = config(true);
    slow.backoff = BackoffConfig {
        min: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        jitter: 0.0,
    };
    let before = crate::time::now_ms();
    // Ten more looks at the outbox after the failure: none finds it due.
    let (told, _) = run_until(outbox.clone(), slow, |o| {
        o.polls.load(std::sync::atomic::Ordering::SeqCst) >= 11
    })
    .await;
    assert_eq!(told.len(), 1, "no second attempt before its time: {told:?}");
    let next = outbox.next_delivery_at().await.unwrap().unwrap();
    assert!(
        next >= before + 3_600_000,
        "next attempt at {next}, asked at {before}"
    );
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);
}
