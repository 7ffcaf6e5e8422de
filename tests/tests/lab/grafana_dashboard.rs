//! deploy/grafana/vantage.json (issue #12 item 7): the dashboard's panels
//! (verdict per sweep and region, findings over time, phase timings per
//! region, …) query only metrics that a real scrape of `vantage serve` has.
//! The scrape comes from a live https sweep with a webhook, so every family
//! of DESIGN §6a is in it. That each query is valid PromQL is checked
//! against a real Prometheus in `sweeps::a_real_prometheus_scrapes…`.

use std::collections::BTreeSet;
use std::time::Duration;

use vantage_lab::fixture::{Fault, Fixture, TlsMode};
use vantage_lab::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};
use vantage_lab::webhook::{Reply, WebhookReceiver};

/// The dashboard, as shipped.
fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/vantage.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("deploy/grafana/vantage.json"))
        .expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard (panel targets and template
/// variables), with Grafana's variables as a query would see them when
/// every sweep and region is selected.
pub(crate) fn dashboard_queries() -> Vec<String> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(METRIC{…}, label) is Grafana's, not PromQL: the
            // metric selector inside it is.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            queries.push(inner.to_string());
        }
    }
    queries
        .into_iter()
        .map(|q| {
            q.replace("$sweep", ".*")
                .replace("$region", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

/// The metric names a query names (`vantage_*`, `probe_*`).
fn metrics_named(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == '"' {
            // A quoted label value: skip to its closing quote.
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                i += if bytes[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == '_');
        if starts_word && (bytes[i].is_ascii_alphabetic() || bytes[i] == '_') {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if word.starts_with("vantage_") || word.starts_with("probe_") {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names of a Prometheus text exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_has_the_panels_the_issue_names_with_unique_ids() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Verdict per sweep, region and route",
        "Findings over time",
        "Phase timings per region (direct)",
    ] {
        assert!(titles.contains(&wanted), "{titles:?}");
    }
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    assert!(
        panels
            .iter()
            .all(|p| p["datasource"]["uid"] == "${datasource}"),
        "every panel uses the dashboard's Prometheus variable"
    );
    let phases = dashboard_queries()
        .into_iter()
        .filter(|q| q.contains("probe_http_duration_seconds"))
        .count();
    assert!(phases >= 1);
    assert_eq!(
        metrics_named(
            "sum by (region) (vantage_agents_connected) - time() + probe_success{a=\"probe_x\"}"
        ),
        BTreeSet::from([
            "probe_success".to_string(),
            "vantage_agents_connected".to_string()
        ]),
        "label values in quotes are not metric names"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_found_in_a_real_scrape() {
    // An https origin (its certificate's expiry is a series) and a webhook
    // (deliveries are a series), so every family is scraped.
    let origin = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::Expired)
        .spawn()
        .await
        .unwrap();
    let hook = WebhookReceiver::spawn(&[], Reply::Accept).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        &["--webhook-allow-private"],
    )
    .await
    .unwrap();
    let token = coordinator.create_token("eu").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let ca = origin.ca_file().display().to_string();
    let mut agent = spawn_agent_process(
        state.path(),
        &["--token", &token, "--name", "fra-1", "--cacert", &ca],
    )
    .unwrap();
    wait_agent_connected(&mut agent).await.unwrap();
    let url = origin.url("/dash");
    let addr = origin.addr().to_string();
    let out = coordinator
        .cli(&[
            "sweep",
            "create",
            "dash",
            &url,
            "--origin",
            &addr,
            "--every",
            "1s",
            "--confirm",
            "1",
            "--webhook",
            &hook.url(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    hook.wait_until(Duration::from_secs(60), |r| !r.is_empty())
        .await
        .expect("the alert's webhook is delivered");

    let http = coordinator.http_addr.expect("serve listens for HTTP");
    let wanted: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|q| metrics_named(q))
        .collect();
    assert!(wanted.len() >= 10, "{wanted:?}");
    let scrape = || async {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{http}/metrics"))
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // /metrics is pulled: no readiness signal exists, so the lab's one
    // bounded poll asks until every family is there.
    let complete = vantage_lab::process::poll_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            wanted
                .is_subset(&sample_names(&scrape().await))
                .then_some(())
        },
    )
    .await;
    if complete.is_err() {
        let text = scrape().await;
        let scraped = sample_names(&text);
        let missing: Vec<&String> = wanted.difference(&scraped).collect();
        panic!("the dashboard queries {missing:?}, which the scrape lacks:\n{text}");
    }
}
