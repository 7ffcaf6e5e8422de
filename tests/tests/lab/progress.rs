//! Campaign progress on stderr (issue #12 item 5), through the shipped
//! `vantage diagnose`: on a terminal (a pseudo-terminal from util-linux's
//! `script`) one indicatif bar per region, with the results against the
//! plan's expected requests and the region's deadline; with stderr piped,
//! plain lines without terminal escapes, one per plan sent, region done
//! and report ready.

use std::time::Duration;

use vantage_lab::fixture::{Fault, TlsMode};
use vantage_lab::process::bin_path;
use vantage_lab::scenario::ScenarioBuilder;

/// The regions the scenario starts.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The shell-quoted form of one argument.
fn quoted(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_draws_a_bar_per_region_on_a_terminal_and_plain_lines_elsewhere() {
    let Ok(script) = which("script") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "script (util-linux) is required under CI=true"
        );
        eprintln!("SKIPPED diagnose_draws_a_bar_per_region: script (util-linux) is missing");
        return;
    };
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .regions(3)
        .start()
        .await
        .unwrap();

    // Piped: plain lines, no escapes.
    let args = lab.diagnose_args(&[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.coordinator.cli(&refs).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for region in REGIONS {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(region) && l.contains("plan sent to")),
            "{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(region) && l.ends_with(" done")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("report ready: healthy"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal escapes when piped: {stderr:?}"
    );

    // A terminal: `script` runs the same command on a pseudo-terminal and
    // copies what it drew to its stdout. The JSON goes to a file so the
    // drawing is all there is.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut command = vec![
        quoted(&bin_path("vantage").display().to_string()),
        "--data-dir".into(),
        quoted(&lab.coordinator.data_dir().display().to_string()),
    ];
    command.extend(lab.diagnose_args(&[]).iter().map(|a| quoted(a)));
    command.push(format!("> {}", quoted(&report.display().to_string())));
    let drawn = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(script)
            .args(["-q", "-e", "-c", &command.join(" "), "/dev/null"])
            .env("TERM", "xterm-256color")
            .env("COLUMNS", "120")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("diagnose on a pseudo-terminal finishes")
    .unwrap();
    let text = String::from_utf8_lossy(&drawn.stdout).to_string();
    assert!(drawn.status.success(), "{drawn:?}\n{text}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["status"], "healthy");
    // The last frame of each region's bar: full, its expected requests
    // done, "of <deadline>", done.
    let plain = strip_escapes(&text);
    for region in REGIONS {
        let expected: usize = json["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["region"] == region)
            .map(|r| r["probes"].as_array().unwrap().len())
            .unwrap();
        // indicatif pads each bar to the width and moves the cursor
        // between frames: the region's last frame runs from its name to
        // its "done".
        let from = plain
            .rfind(&format!("  {region} "))
            .unwrap_or_else(|| panic!("no bar for {region} in:\n{plain}"));
        let to = plain[from..]
            .find(" done")
            .unwrap_or_else(|| panic!("no finished bar for {region} in:\n{plain}"));
        let bar = &plain[from..from + to + " done".len()];
        assert!(bar.contains("===="), "a drawn bar: {bar}");
        assert!(bar.contains(" of "), "elapsed against the deadline: {bar}");
        assert!(bar.contains(" ok"), "the outcome counts: {bar}");
        let counts = bar
            .split_whitespace()
            .find_map(|w| w.split_once('/'))
            .unwrap_or_else(|| panic!("no done/expected in {bar}"));
        assert_eq!(counts.0, counts.1, "{bar}");
        assert!(
            counts.0.parse::<usize>().unwrap() >= expected,
            "at least the report's {expected} probes: {bar}"
        );
    }
    assert!(plain.contains("report ready: healthy"), "{plain}");
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The text without ANSI escape sequences: colours vanish, and a cursor
/// move or line clear between redraws (and a carriage return) becomes a
/// line break, so drawn frames do not run into each other.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters until a final byte in @..~; `m`
                    // (colour) draws nothing.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            if c != 'm' {
                                out.push('\n');
                            }
                            break;
                        }
                    }
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}
