//! Webhooks (DESIGN §6a): the `vantage.alert.v1` payload of an alert
//! event, the egress policy its URLs obey, and the outbox worker that POSTs
//! queued events with reqwest until a receiver answers 2xx.
//!
//! The outbox is the store: an event is queued in the same transaction as
//! the run that raised it, and marked delivered only after a 2xx. A crash
//! between the 2xx and the mark makes the next process send it once more,
//! with the same `id` (and an `X-Vantage-Event-Id` header), so a receiver
//! that keys on the id sees each event once. Retries back off (jittered,
//! from the stored attempt count, so a restart keeps the pace) without end:
//! an event is never dropped.
//!
//! The worker is decoupled from the store by [`Outbox`]; it never imports
//! the API or the CLI.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use vantage_support::backoff::BackoffConfig;
use vantage_support::netrange::special_purpose_range;

use super::alert::AlertEvent;
use crate::store::StoreError;

/// The payload's schema name.
pub const SCHEMA: &str = "vantage.alert.v1";

/// One alert event to announce.
#[derive(Debug, Clone)]
pub struct AlertNotice<'a> {
    /// The event's id: the same in every POST of it.
    pub id: String,
    /// What happened.
    pub event: &'a AlertEvent,
    /// The sweep.
    pub sweep: String,
    /// The finding code.
    pub code: String,
    /// The finding kind (`""` when its code has none).
    pub kind: String,
    /// Where it holds (for `resolved`: where it last held).
    pub regions: BTreeSet<String>,
    /// When, unix milliseconds.
    pub at_ms: i64,
    /// The campaign of the run that raised it.
    pub campaign: String,
    /// The finding's summary.
    pub summary: String,
    /// That run's report (`vantage.report.v1`), or null.
    pub report: serde_json::Value,
}

/// The one line Slack and Mattermost show.
pub fn text(notice: &AlertNotice<'_>) -> String {
    let what = if notice.kind.is_empty() {
        notice.code.clone()
    } else {
        format!("{} ({})", notice.code, notice.kind)
    };
    let regions: Vec<&str> = notice.regions.iter().map(String::as_str).collect();
    let word = match notice.event {
        AlertEvent::Opened(_) => "OPENED",
        AlertEvent::Changed(_) => "CHANGED",
        AlertEvent::Resolved => "RESOLVED",
    };
    let summary = notice.summary.replace(['\n', '\r'], " ");
    let mut line = format!(
        "[vantage] {word} {}: {what} in {}",
        notice.sweep,
        if regions.is_empty() {
            "-".to_string()
        } else {
            regions.join(", ")
        }
    );
    if !summary.is_empty() && !matches!(notice.event, AlertEvent::Resolved) {
        line.push_str(" — ");
        line.push_str(&summary);
    }
    line
}

/// The `vantage.alert.v1` JSON of an event.
pub fn payload(notice: &AlertNotice<'_>) -> serde_json::Value {
    serde_json::json!({
        "schema": SCHEMA,
        "id": notice.id,
        "event": notice.event.as_str(),
        "sweep": notice.sweep,
        "code": notice.code,
        "kind": notice.kind,
        "regions": notice.regions,
        "at": crate::time::rfc3339(notice.at_ms),
        "campaign": notice.campaign,
        "summary": notice.summary,
        "text": text(notice),
        "report": notice.report,
    })
}

/// Which webhook URLs may be reached: like the probes' policy, no
/// special-purpose address (loopback, private, link-local, …) unless
/// allowed (`serve --webhook-allow-private`).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookPolicy {
    /// Allow special-purpose addresses.
    pub allow_private: bool,
}

/// A webhook URL the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    /// Not an http(s) URL with a host.
    #[error("webhook {0:?} is not an http:// or https:// URL with a host")]
    Syntax(String),
    /// Its address is special-purpose.
    #[error("webhook host {host} is in a special-purpose range ({range}); start the coordinator with --webhook-allow-private to allow it")]
    Private {
        /// The host (never the whole URL: it may hold a secret).
        host: String,
        /// The range's name.
        range: &'static str,
    },
}

impl WebhookPolicy {
    /// Checks a URL's syntax and, for a literal IP, its address. A host
    /// name is checked when it is resolved, at each delivery.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, WebhookUrlError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|_| WebhookUrlError::Syntax(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WebhookUrlError::Syntax(url.to_string()));
        }
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host,
            _ => return Err(WebhookUrlError::Syntax(url.to_string())),
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check_ip(ip, &ip.to_string())?;
        }
        Ok(parsed)
    }

    fn check_ip(&self, ip: IpAddr, host: &str) -> Result<(), WebhookUrlError> {
        if self.allow_private {
            return Ok(());
        }
        match special_purpose_range(ip) {
            Some(range) => Err(WebhookUrlError::Private {
                host: host.to_string(),
                range,
            }),
            None => Ok(()),
        }
    }
}

/// Resolves webhook hosts and drops special-purpose answers unless allowed,
/// so a name cannot point the coordinator at its own network (DNS
/// rebinding included: every delivery resolves again).
#[derive(Debug, Clone, Copy)]
struct GuardedResolver(WebhookPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_ip(a.ip(), &host).is_ok())
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = match addrs.first() {
                    Some(a) => Box::new(
                        policy
                            .check_ip(a.ip(), &host)
                            .err()
                            .unwrap_or(WebhookUrlError::Syntax(host.clone())),
                    ),
                    None => format!("{host} has no address").into(),
                };
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// A queued POST as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event's id.
    pub event_id: String,
    /// Where to POST.
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
}

/// Where the worker finds its deliveries (the store, in `vantage serve`).
#[tonic::async_trait]
pub trait Outbox: Send + Sync {
    /// Deliveries due at `now_ms`, oldest first, at most `limit`.
    async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// The earliest next attempt of an undelivered delivery.
    async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError>;
    /// Delivered: never attempted again.
    async fn delivery_done(&self, event_id: &str, url: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Failed: try again at `next_at_ms`; `attempts` is the new count.
    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError>;
}

/// How one attempt ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Answered 2xx.
    Delivered,
    /// Anything else; retried.
    Failed,
}

impl DeliveryResult {
    /// The metric label (`delivered|failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Failed => "failed",
        }
    }
}

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The egress policy.
    pub policy: WebhookPolicy,
    /// Longest wait for one POST's answer.
    pub timeout: Duration,
    /// Delay between attempts, from the attempt count.
    pub backoff: BackoffConfig,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// Longest sleep between looks at the outbox (another process may
    /// have queued events).
    pub poll: Duration,
    /// Wall-clock unix milliseconds (tests move it).
    pub clock: fn() -> i64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            policy: WebhookPolicy::default(),
            timeout: Duration::from_secs(10),
            backoff: BackoffConfig {
                min: Duration::from_secs(1),
                max: Duration::from_secs(600),
                jitter: 0.2,
            },
            concurrency: 8,
            poll: Duration::from_secs(30),
            clock: crate::time::now_ms,
        }
    }
}

impl WebhookConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        self.backoff.validate().map_err(|e| e.to_string())?;
        if self.timeout.is_zero() || self.concurrency == 0 || self.poll.is_zero() {
            return Err("webhook timeout, concurrency and poll must be positive".into());
        }
        Ok(())
    }
}

/// The host of a URL, for logs (the path of a Slack webhook is its secret).
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One POST: `Ok` on a 2xx, else why not.
async fn post(client: &reqwest::Client, policy: WebhookPolicy, d: &Delivery) -> Result<(), String> {
    let url = policy.check_url(&d.url).map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-vantage-event-id", &d.event_id)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| {
            // reqwest's text names the URL; say what failed without it.
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            let mut cause = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            format!("{kind}: {cause}")
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered HTTP {}", status.as_u16()))
    }
}

/// Delivers the outbox until `shutdown` turns true. See the module
/// documentation.
pub async fn run_outbox(
    outbox: Arc<dyn Outbox>,
    config: WebhookConfig,
    wake: Arc<Notify>,
    on_result: impl Fn(DeliveryResult) + Send + Sync + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        // An HTTP_PROXY in the environment must not route around the
        // address check.
        .no_proxy()
        .user_agent(concat!("vantage/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver(config.policy)))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhooks stay queued");
            return;
        }
    };
    let on_result = Arc::new(on_result);
    let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = (config.clock)();
        let mut sleep_for = config.poll;
        match outbox.due_deliveries(now, 256).await {
            Ok(due) => {
                let mut tasks = tokio::task::JoinSet::new();
                for delivery in due {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, outbox, on_result) =
                        (client.clone(), outbox.clone(), on_result.clone());
                    let config = config.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        deliver(&client, &*outbox, &config, &delivery, &*on_result).await;
                    });
                }
                while tasks.join_next().await.is_some() {}
                match outbox.next_delivery_at().await {
                    Ok(Some(next)) => {
                        let wait =
                            u64::try_from(next.saturating_sub((config.clock)())).unwrap_or(0);
                        sleep_for = sleep_for.min(Duration::from_millis(wait));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
        }
        if sleep_for.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    outbox: &dyn Outbox,
    config: &WebhookConfig,
    delivery: &Delivery,
    on_result: &(dyn Fn(DeliveryResult) + Send + Sync),
) {
    let host = host_of(&delivery.url);
    let stored = match post(client, config.policy, delivery).await {
        Ok(()) => {
            on_result(DeliveryResult::Delivered);
            tracing::info!(event = %delivery.event_id, %host, "webhook delivered");
            outbox
                .delivery_done(&delivery.event_id, &delivery.url, (config.clock)())
                .await
        }
        Err(why) => {
            on_result(DeliveryResult::Failed);
            let attempts = delivery.attempts.saturating_add(1);
            let delay = config.backoff.delay(attempts - 1, &mut rand::rng());
            let next = (config.clock)()
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            tracing::warn!(event = %delivery.event_id, %host, attempts, error = %why, retry_in = ?delay, "webhook delivery failed");
            outbox
                .delivery_retry(&delivery.event_id, &delivery.url, attempts, next, &why)
                .await
        }
    };
    if let Err(e) = stored {
        tracing::error!(event = %delivery.event_id, error = %e, "cannot record the webhook delivery");
    }
}

#[cfg(test)]
mod worker_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: &AlertEvent) -> AlertNotice<'_> {
        AlertNotice {
            id: "e-1".into(),
            event,
            sweep: "checkout-eu".into(),
            code: "origin_down".into(),
            kind: "connect_refused".into(),
            regions: ["eu".to_string(), "us".to_string()].into(),
            at_ms: 1_764_669_609_187,
            campaign: "c-1".into(),
            summary: "The origin refuses connections.".into(),
            report: serde_json::json!({"schema": "vantage.report.v1"}),
        }
    }

    #[test]
    fn the_payload_has_the_contract_fields_and_one_line_of_text() {
        let event = AlertEvent::Opened(["eu".to_string()].into());
        let p = payload(&notice(&event));
        assert_eq!(p["schema"], "vantage.alert.v1");
        assert_eq!(p["event"], "opened");
        assert_eq!(p["id"], "e-1");
        assert_eq!(p["regions"], serde_json::json!(["eu", "us"]));
        assert_eq!(p["at"], "2025-12-02T10:00:09.187Z");
        assert_eq!(p["report"]["schema"], "vantage.report.v1");
        assert_eq!(
            p["text"],
            "[vantage] OPENED checkout-eu: origin_down (connect_refused) in eu, us — The origin refuses connections."
        );
        let resolved = payload(&notice(&AlertEvent::Resolved));
        assert_eq!(resolved["event"], "resolved");
        assert!(resolved["text"]
            .as_str()
            .unwrap()
            .starts_with("[vantage] RESOLVED checkout-eu"));
    }

    #[test]
    fn private_webhook_addresses_are_refused_unless_allowed() {
        let strict = WebhookPolicy::default();
        let err = strict.check_url("http://127.0.0.1:9/hook").unwrap_err();
        assert!(err.to_string().contains("--webhook-allow-private"), "{err}");
        assert!(strict.check_url("http://[::1]/x").is_err());
        assert!(strict.check_url("http://10.1.2.3/x").is_err());
        assert!(strict
            .check_url("https://hooks.slack.com/services/T/B/X")
            .is_ok());
        assert!(strict.check_url("ftp://hooks.example/").is_err());
        let open = WebhookPolicy {
            allow_private: true,
        };
        assert!(open.check_url("http://127.0.0.1:9/hook").is_ok());
    }
}
