//! The HTML report as a browser sees it (issue #12 item 4): a real lab
//! scenario (three agent processes, the witness, an edge with one broken
//! address) runs through the shipped `vantage diagnose … --html FILE`;
//! headless Chromium then loads the page from `file://` and its DOM
//! (`--dump-dom`) must hold one matrix cell per region × probe of the same
//! campaign's JSON report (`vantage campaign show ID --json`) and every
//! finding, and its screenshot must not be blank.
//!
//! Chromium is Debian's `chromium` (`/usr/bin/chromium`): without it the
//! test prints `SKIPPED …`, except under `CI=true`, where a missing browser
//! fails it (`.ci/run` installs it). Chromium runs with a temporary profile,
//! no sandbox (CI runs as root), background networking off and every host
//! name mapped to "not found", bounded by a timeout: the page loads nothing
//! and the browser may not fetch anything either.
//!
//! `VANTAGE_LAB_KEEP_REPORT=DIR` copies the page there (for the README's
//! screenshot).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use vantage_lab::fixture::{Fault, TlsMode};
use vantage_lab::scenario::{findings, ScenarioBuilder, QUICK_DIAGNOSE};
use vantage_proto::cdn::CdnProfile;

const CHROMIUM: &str = "chromium";
/// How long one Chromium run may take (a cold start on a busy 2-core
/// machine takes a few seconds).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether Chromium can be run; outside CI a missing one prints SKIPPED,
/// under `CI=true` it fails the test.
fn have_chromium(test: &str) -> bool {
    match std::process::Command::new(CHROMIUM)
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "{test}: {CHROMIUM} --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {CHROMIUM} is required under CI=true (apt-get install chromium)");
            }
            eprintln!("SKIPPED {test}: {CHROMIUM} is missing (apt-get install chromium)");
            false
        }
        Err(e) => panic!("{test}: cannot run {CHROMIUM}: {e}"),
    }
}

/// Runs headless Chromium on `page` with `extra` flags and returns its stdout.
async fn chromium(profile: &Path, page: &Path, extra: &[String]) -> Vec<u8> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        // Any host name resolves to nothing: a fetch could not leave.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra.iter().cloned());
    args.push(format!("file://{}", page.display()));
    let run = tokio::process::Command::new(CHROMIUM)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHROMIUM_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{CHROMIUM} {args:?} did not finish in {CHROMIUM_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    assert!(
        out.status.success(),
        "{CHROMIUM} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The value of attribute `name` in the tag text `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let i = tag.find(&needle)?;
    tag[i + needle.len()..].split_once('"').map(|(v, _)| v)
}

/// The opening tags of `dom` that start with `prefix` (e.g. `td class="cell"`).
fn tags_starting<'a>(dom: &'a str, prefix: &str) -> Vec<&'a str> {
    dom.split('<')
        .skip(1)
        .filter_map(|s| s.split_once('>').map(|(tag, _)| tag))
        .filter(|t| t.starts_with(prefix))
        .collect()
}

/// The campaign id in the text report's first line
/// (`vantage: faulty  (URL, campaign ID)`).
fn campaign_id(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let (_, rest) = line.rsplit_once("campaign ")?;
    Some(rest.trim_end_matches(')').trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_matrix_every_finding_and_a_screenshot() {
    let test = "html_report::chromium_renders_the_matrix_every_finding_and_a_screenshot";
    if !have_chromium(test) {
        return;
    }
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .edge(
            CdnProfile::EdgeOne,
            Duration::from_millis(600),
            vec![
                ("127.0.0.2".parse().unwrap(), None),
                ("127.0.0.3".parse().unwrap(), Some(502)),
            ],
        )
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");

    // The shipped command line: `--html FILE` (the text report on stdout).
    let mut args: Vec<String> = lab
        .diagnose_args(QUICK_DIAGNOSE)
        .into_iter()
        .filter(|a| a != "--json")
        .collect();
    args.push("--html".into());
    args.push(page.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.coordinator.cli(&refs).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings exit 1: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = campaign_id(&text).unwrap_or_else(|| panic!("no campaign id in: {text}"));
    let shown = lab
        .coordinator
        .cli(&["campaign", "show", &id, "--json"])
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|e| panic!("campaign show {id} --json: {e}"));
    assert_eq!(report["campaign"], id.as_str());
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(!codes.is_empty(), "the scenario has a finding: {report:#}");
    assert_eq!(findings(&report, "edge_fault").len(), 1, "{report:#}");
    if let Ok(keep) = std::env::var("VANTAGE_LAB_KEEP_REPORT") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&page, Path::new(&keep).join("report.html")).unwrap();
    }

    // What the browser built from the page.
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        profile.path(),
        &page,
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=2000".into(),
        ],
    )
    .await;
    let dom = String::from_utf8(dom).unwrap();
    assert!(dom.contains("<table class=\"matrix\">"), "{dom}");

    // One cell per region × probe, where a probe is one (route, variant,
    // address) step that any region ran.
    let regions: BTreeSet<&str> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["region"].as_str())
        .collect();
    assert_eq!(regions.len(), 3, "{report:#}");
    let probes: BTreeSet<(&str, &str, &str)> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["probes"].as_array().unwrap().iter())
        .map(|p| {
            (
                p["route"].as_str().unwrap_or(""),
                p["variant"].as_str().unwrap_or(""),
                p["address"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        probes.len() >= 4,
        "direct and two edge addresses: {probes:?}"
    );
    let cells = tags_starting(&dom, "td class=\"cell\"");
    assert_eq!(
        cells.len(),
        regions.len() * probes.len(),
        "{} regions × {} probes",
        regions.len(),
        probes.len()
    );
    let pairs: BTreeSet<(&str, &str)> = cells
        .iter()
        .map(|c| {
            (
                attr(c, "data-region").unwrap_or(""),
                attr(c, "data-probe").unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(pairs.len(), cells.len(), "each region × probe once");
    let cell_regions: BTreeSet<&str> = pairs.iter().map(|(r, _)| *r).collect();
    assert_eq!(cell_regions, regions);
    let cell_probes: BTreeSet<&str> = pairs.iter().map(|(_, p)| *p).collect();
    assert_eq!(cell_probes.len(), probes.len(), "{cell_probes:?}");
    // The broken edge address reads 502 in its cells, as text.
    assert!(
        cells.iter().any(
            |c| attr(c, "data-probe").is_some_and(|p| p.contains("127.0.0.3"))
                && attr(c, "data-state") == Some("http-error")
        ),
        "{cells:?}"
    );
    assert!(
        dom.contains("<b>502</b>"),
        "the status is written in the cell"
    );

    // Every finding, with its code and reproduce commands.
    let articles = tags_starting(&dom, "article class=\"finding\"");
    assert_eq!(articles.len(), codes.len(), "{articles:?}");
    for code in &codes {
        assert!(
            articles.iter().any(|a| attr(a, "data-code") == Some(code)),
            "{code} missing: {articles:?}"
        );
    }
    assert!(
        dom.contains("<pre class=\"reproduce\"><code>curl "),
        "copyable commands"
    );
    assert_eq!(
        tags_starting(&dom, "figure class=\"waterfall\"").len(),
        regions.len(),
        "a waterfall per region"
    );

    // The screenshot is a page, not a blank canvas.
    let png = dir.path().join("report.png");
    chromium(
        profile.path(),
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2000".into(),
        ],
    )
    .await;
    let (distinct, non_white) = png_stats(&png);
    assert!(distinct > 50, "{distinct} distinct colours");
    assert!(
        non_white > 0.03,
        "{:.1}% of the pixels are not white",
        non_white * 100.0
    );
}

/// How many distinct colours the PNG at `path` has, and the fraction of its
/// pixels that are not (near) white.
fn png_stats(path: &Path) -> (usize, f64) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(info.width >= 1000 && info.height >= 1000, "{info:?}");
    let bytes = &buf[..info.buffer_size()];
    let mut colours = BTreeSet::new();
    let mut non_white = 0usize;
    let mut pixels = 0usize;
    for px in bytes.chunks_exact(channels) {
        let rgb = match channels {
            1 | 2 => [px[0], px[0], px[0]],
            _ => [px[0], px[1], px[2]],
        };
        colours.insert(rgb);
        pixels += 1;
        if rgb.iter().any(|c| *c < 240) {
            non_white += 1;
        }
    }
    #[allow(clippy::cast_precision_loss)] // pixel counts of a screenshot
    let fraction = non_white as f64 / pixels.max(1) as f64;
    (colours.len(), fraction)
}
