//! The `vantage-agent` binary's command-line contract.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vantage-agent"))
        .args(args)
        .env_remove("VANTAGE_TOKEN")
        .env_remove("VANTAGE_AGENT_STATE_DIR")
        .output()
        .unwrap()
}

#[test]
fn run_help_documents_every_flag() {
    let out = agent(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--token",
        "--state-dir",
        "--name",
        "--bind-ip",
        "--spool-max",
        "--allow-private",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn not_enrolled_without_token_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["run", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not enrolled yet"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_spool_size_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "run",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--spool-max",
        "plenty",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spool-max"));
}
