//! The `vantage` binary's command-line contract: help that teaches, usage
//! errors and operational errors as one line with exit code 2, never a panic.

use std::process::Command;

fn vantage(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(args)
        .env_remove("VANTAGE_DATA_DIR")
        .env_remove("VANTAGE_COORDINATOR")
        .output()
        .unwrap()
}

#[test]
fn help_names_every_command() {
    let out = vantage(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["serve", "token", "agents"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = vantage(&["serve", "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn unusable_data_dir_fails_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = vantage(&[
        "--data-dir",
        file.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

#[test]
fn client_without_coordinator_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = vantage(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "agents",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no coordinator found"), "{stderr}");
}

#[test]
fn bad_heartbeat_fails_before_anything_listens() {
    // Both addresses are taken by this test: a serve that bound anything
    // before checking --heartbeat would fail with "cannot listen" instead.
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for heartbeat in ["1ms", "11m"] {
        let out = vantage(&[
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            &grpc.local_addr().unwrap().to_string(),
            "--http-listen",
            &http.local_addr().unwrap().to_string(),
            "--heartbeat",
            heartbeat,
        ]);
        assert_eq!(out.status.code(), Some(2), "--heartbeat {heartbeat}");
        assert!(out.stdout.is_empty(), "nothing on stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error:")
                && stderr.contains("--heartbeat")
                && stderr.contains("between 100ms and 10m"),
            "{stderr}"
        );
        // Checked before the data dir is even created, let alone a port bound.
        assert!(!data.exists(), "the data dir was created");
    }
}
