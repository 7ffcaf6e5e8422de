//! What deploy/ ships is what a host can use (issue #12): the systemd units
//! pass `systemd-analyze verify` against the built binaries and score "OK"
//! in `systemd-analyze security`; each unit's command line parses; the
//! install script, in its dry mode against a temporary root, writes the
//! files with their modes, enables the unit (its own, or a package's when
//! installing a .deb), changes nothing when run again and refuses bad usage
//! with exit 2; shellcheck finds nothing in it or in deploy/walkthrough.sh; and
//! both binaries print completion scripts and write their man pages.
//!
//! systemd-analyze (Debian's `systemd`), shellcheck and dpkg-deb are system tools:
//! without one, its tests print `SKIPPED …`, except under `CI=true`, where
//! a missing tool fails them (`.ci/run` installs both).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vantage_lab::process::bin_path;

/// The three units, by file name.
const UNITS: [&str; 3] = [
    "vantage.service",
    "vantage-agent.service",
    "vantage-witness.service",
];

/// The repository root (the lab crate is `tests/`).
pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate sits in the repository")
        .to_path_buf()
}

pub(crate) fn unit_path(unit: &str) -> PathBuf {
    repo_root().join("deploy/systemd").join(unit)
}

fn script_path() -> PathBuf {
    repo_root().join("deploy/install-agent.sh")
}

/// Whether `program` can be run; outside CI a missing one prints SKIPPED,
/// under `CI=true` it fails the test.
pub(crate) fn have_tool(test: &str, program: &str, package: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {program} is required under CI=true (apt-get install {package})");
            }
            eprintln!("SKIPPED {test}: {program} is missing (apt-get install {package})");
            false
        }
        Err(e) => panic!("{test}: cannot run {program}: {e}"),
    }
}

pub(crate) fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"))
}

pub(crate) fn said(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copies a directory tree, keeping symbolic links as links.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A root for `systemd-analyze verify --root`: the host's own system units
/// (the targets ours order against), the built binaries at usr/bin (hard
/// links where they can be: the debug binaries are large) and our units in
/// etc/systemd/system. It sits beside the binaries so that links work.
fn verify_root() -> tempfile::TempDir {
    let bins = bin_path("vantage");
    let root = tempfile::tempdir_in(bins.parent().unwrap()).unwrap();
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|dir| dir.join("multi-user.target").exists())
        .expect("systemd-analyze is installed, so are systemd's units");
    copy_tree(host_units, &root.path().join("usr/lib/systemd/system"));
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    for bin in ["vantage", "vantage-agent"] {
        let (from, to) = (bin_path(bin), root.path().join("usr/bin").join(bin));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    for unit in UNITS {
        std::fs::copy(unit_path(unit), etc.join(unit)).unwrap();
    }
    root
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let test = "every_unit_passes_systemd_analyze_verify";
    if !have_tool(test, "systemd-analyze", "systemd") {
        return;
    }
    let root = verify_root();
    let root_arg = format!("--root={}", root.path().display());
    for unit in UNITS {
        // --man=no: the man pages are the packages' (a test below checks
        // that each unit's Documentation= page is generated).
        let output = run("systemd-analyze", &["verify", "--man=no", &root_arg, unit]);
        assert!(output.status.success(), "verify {unit}: {}", said(&output));
        // An unknown or misspelt setting is only a warning (exit 0): none
        // may name our unit.
        let stem = unit.trim_end_matches(".service");
        let warnings: Vec<&str> = std::str::from_utf8(&output.stderr)
            .unwrap()
            .lines()
            .filter(|line| line.contains(stem))
            .collect();
        assert!(warnings.is_empty(), "verify {unit} warned: {warnings:#?}");
    }
}

/// The "Overall exposure level" of a unit file, from `systemd-analyze
/// security --offline=yes`.
fn exposure(unit: &str) -> f64 {
    let path = unit_path(unit);
    let output = run(
        "systemd-analyze",
        &["security", "--offline=yes", path.to_str().unwrap()],
    );
    assert!(
        output.status.success(),
        "security {unit}: {}",
        said(&output)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("security {unit}: no overall exposure line: {text}"));
    let score = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|score| score.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("security {unit}: cannot read a score in {line:?}"));
    eprintln!("{unit}: {line}");
    score
}

#[test]
fn every_unit_scores_ok_in_systemd_analyze_security() {
    let test = "every_unit_scores_ok_in_systemd_analyze_security";
    if !have_tool(test, "systemd-analyze", "systemd") {
        return;
    }
    // The agent's target is 2.0 ("OK"); the coordinator and the witness are
    // held to it too, so a loosened setting shows here.
    for unit in UNITS {
        let score = exposure(unit);
        assert!(
            (0.0..=2.0).contains(&score),
            "{unit}: exposure {score}, above 2.0"
        );
    }
}

/// A unit's `Key=` values, in order.
fn settings(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit_path(unit)).unwrap();
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn each_units_command_line_parses_and_keeps_the_token_off_it() {
    for unit in UNITS {
        let exec = settings(unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{unit}: one ExecStart");
        assert!(!exec[0].contains("--token "), "{unit}: {}", exec[0]);
        let defaults: BTreeMap<String, String> = settings(unit, "Environment")
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let words: Vec<String> = exec[0]
            .split_whitespace()
            // `$VAR` expands to words from the environment file, none by
            // default; `${VAR}` to one word.
            .filter(|word| !word.starts_with('$') || word.starts_with("${"))
            .map(|word| {
                let word = word.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x");
                match word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                    Some(var) => defaults
                        .get(var)
                        .unwrap_or_else(|| panic!("{unit}: ${{{var}}} has no default"))
                        .clone(),
                    None => word,
                }
            })
            .collect();
        let program = words[0]
            .strip_prefix("/usr/bin/")
            .unwrap_or_else(|| panic!("{unit}: {} is not under /usr/bin", words[0]));
        // Every flag before --help must parse for --help to be reached.
        let mut args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        args.push("--help");
        let output = run(bin_path(program), &args);
        assert!(
            output.status.success(),
            "{unit}: {args:?}: {}",
            said(&output)
        );
        if unit != "vantage.service" {
            let credential = settings(unit, "LoadCredential");
            assert_eq!(credential.len(), 1, "{unit}: one LoadCredential");
            assert!(credential[0].starts_with("token:/etc/vantage/"), "{unit}");
            assert!(exec[0].contains("--token-file ${CREDENTIALS_DIRECTORY}/token"));
        }
    }
}

#[test]
fn each_units_documentation_page_is_generated() {
    let dir = tempfile::tempdir().unwrap();
    for bin in ["vantage", "vantage-agent"] {
        let output = run(bin_path(bin), &["man", dir.path().to_str().unwrap()]);
        assert!(output.status.success(), "{bin} man: {}", said(&output));
    }
    for unit in UNITS {
        for doc in settings(unit, "Documentation") {
            for page in doc.split_whitespace() {
                let Some(name) = page
                    .strip_prefix("man:")
                    .and_then(|p| p.strip_suffix("(1)"))
                else {
                    continue;
                };
                let file = dir.path().join(format!("{name}.1"));
                assert!(file.exists(), "{unit}: Documentation={page}: no {name}.1");
            }
        }
    }
}

#[test]
fn completions_name_the_subcommands() {
    let bash = run(bin_path("vantage"), &["completions", "bash"]);
    assert!(bash.status.success(), "{}", said(&bash));
    let script = String::from_utf8(bash.stdout).unwrap();
    for word in [
        "_vantage()",
        "serve",
        "diagnose",
        "campaign",
        "sweep",
        "token",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let zsh = run(bin_path("vantage-agent"), &["completions", "zsh"]);
    assert!(zsh.status.success(), "{}", said(&zsh));
    let script = String::from_utf8(zsh.stdout).unwrap();
    assert!(script.starts_with("#compdef vantage-agent"), "{script}");
    for word in ["run", "probe", "witness", "--token-file", "--access-log"] {
        assert!(script.contains(word), "zsh completion lacks {word}");
    }
    for bin in ["vantage", "vantage-agent"] {
        let bad = run(bin_path(bin), &["completions", "tcsh"]);
        assert_eq!(bad.status.code(), Some(2), "{bin}: {}", said(&bad));
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains("possible values"), "{stderr}");
    }
}

#[test]
fn man_pages_are_roff_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let cases = [
        (
            "vantage",
            &[
                "serve", "token", "agents", "diagnose", "campaign", "sweep", "alerts",
            ][..],
        ),
        (
            "vantage-agent",
            &["run", "probe", "witness", "completions"][..],
        ),
    ];
    for (bin, subcommands) in cases {
        let output = run(bin_path(bin), &["man", out.to_str().unwrap()]);
        assert!(output.status.success(), "{bin} man: {}", said(&output));
        // It prints each page it wrote; each exists.
        let listed: Vec<PathBuf> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(PathBuf::from)
            .collect();
        assert_eq!(listed[0], out.join(format!("{bin}.1")));
        assert!(listed.iter().all(|page| page.exists()), "{listed:?}");
        let top = std::fs::read_to_string(&listed[0]).unwrap();
        assert!(top.contains(&format!(".TH {bin} 1")), "{top}");
        for sub in subcommands {
            assert!(top.contains(sub), "{bin}.1 does not name {sub}");
            let page = out.join(format!("{bin}-{sub}.1"));
            let text = std::fs::read_to_string(&page)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            assert!(text.contains(&format!(".TH {bin}-{sub} 1")), "{text}");
        }
        assert!(
            !out.join(format!("{bin}-man.1")).exists(),
            "a page for the hidden man"
        );
    }
    let token_create = std::fs::read_to_string(out.join("vantage-token-create.1")).unwrap();
    assert!(token_create.contains("region"), "{token_create}");
}

/// A syntactically valid token naming `coord.example.com:7443` (it cannot
/// enroll anywhere: nothing here starts the agent).
pub(crate) fn fake_token() -> String {
    vantage_proto::token::EnrollmentToken {
        addrs: vec!["coord.example.com:7443".into()],
        ca_sha256: "ab".repeat(32),
        secret: "not-a-real-secret-0123456789abcdef".into(),
    }
    .encode()
}

pub(crate) fn install(args: &[&str]) -> Output {
    let mut full = vec![script_path().to_str().unwrap().to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    run("sh", &full)
}

/// Each entry under `root`: (mode, owner, mtime, size, what it holds: a
/// symlink's target, a small file's bytes, or nothing for a large one).
type Tree = BTreeMap<PathBuf, (u32, u32, i64, u64, Vec<u8>)>;

fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_dir() {
                pending.push(path.clone());
                Vec::new()
            } else if meta.len() < 1 << 20 {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            let key = path.strip_prefix(root).unwrap().to_path_buf();
            let mtime = if meta.is_dir() {
                0
            } else {
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000
            };
            tree.insert(
                key,
                (meta.mode() & 0o7777, meta.uid(), mtime, meta.len(), content),
            );
        }
    }
    tree
}

pub(crate) fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_dry_run_writes_the_files_enables_the_unit_and_is_idempotent() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let token_file = work.path().join("token");
    // As pasted: a trailing newline and a space.
    std::fs::write(&token_file, format!("{} \n", fake_token())).unwrap();
    let agent = bin_path("vantage-agent");
    let args = [
        "--binary",
        agent.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--coordinator",
        "coord.example.com",
        "--name",
        "fra-1",
        "--label",
        "dc=fra1",
        "--root",
        root.to_str().unwrap(),
    ];
    let first = install(&args);
    assert!(first.status.success(), "{}", said(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    for line in [
        "would run: systemctl daemon-reload",
        "would run: systemctl enable vantage-agent.service",
        "would run: systemctl restart vantage-agent.service",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }

    let binary = root.join("usr/bin/vantage-agent");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(
        std::fs::metadata(&binary).unwrap().len(),
        std::fs::metadata(&agent).unwrap().len()
    );
    assert_eq!(mode(&root.join("etc/vantage")), 0o700);
    let token = root.join("etc/vantage/agent.token");
    assert_eq!(mode(&token), 0o600);
    assert_eq!(
        std::fs::read_to_string(&token).unwrap(),
        format!("{}\n", fake_token())
    );
    if rustix::process::geteuid().is_root() {
        assert_eq!(std::fs::metadata(&token).unwrap().uid(), 0, "root-owned");
    }
    let defaults = root.join("etc/default/vantage-agent");
    assert_eq!(mode(&defaults), 0o644);
    let text = std::fs::read_to_string(&defaults).unwrap();
    let values: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        values,
        ["VANTAGE_AGENT_OPTS=\"--name fra-1 --label dc=fra1\""]
    );
    // The embedded unit is deploy/systemd's, byte for byte.
    let unit = root.join("etc/systemd/system/vantage-agent.service");
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read(&unit).unwrap(),
        std::fs::read(unit_path("vantage-agent.service")).unwrap(),
        "install-agent.sh's embedded unit differs from deploy/systemd/vantage-agent.service"
    );
    // Enabled as `systemctl --root enable` would: WantedBy=multi-user.target.
    let link = root.join("etc/systemd/system/multi-user.target.wants/vantage-agent.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/etc/systemd/system/vantage-agent.service")
    );

    // Again: the same tree, nothing rewritten (mtimes too), nothing said
    // but what it would run.
    let before = snapshot(&root);
    let second = install(&args);
    assert!(second.status.success(), "{}", said(&second));
    assert_eq!(snapshot(&root), before, "the second run changed the tree");
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(!stdout.contains("wrote "), "{stdout}");
    assert!(stdout.contains("would run: systemctl restart vantage-agent.service"));

    // Other arguments rewrite the settings whole: no line is added twice.
    let third = install(&[
        "--binary",
        agent.to_str().unwrap(),
        "--token",
        &fake_token(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(third.status.success(), "{}", said(&third));
    let text = std::fs::read_to_string(&defaults).unwrap();
    let values: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(values, ["VANTAGE_AGENT_OPTS=\"\""]);
}

#[test]
fn install_script_refuses_bad_usage_with_exit_2_and_touches_nothing() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root_s = root.to_str().unwrap().to_string();
    let token = fake_token();
    let agent = bin_path("vantage-agent");
    let agent = agent.to_str().unwrap();
    let missing = work.path().join("missing").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "give --deb FILE or --binary FILE"),
        (
            vec!["--binary", agent, "--root", &root_s],
            "give --token-file",
        ),
        (
            vec![
                "--binary", agent, "--deb", agent, "--token", &token, "--root", &root_s,
            ],
            "not both",
        ),
        (
            vec![
                "--binary",
                agent,
                "--token",
                &token,
                "--token-file",
                agent,
                "--root",
                &root_s,
            ],
            "not both",
        ),
        (
            vec!["--binary", agent, "--token", "hunter2", "--root", &root_s],
            "not a vantage enrollment token",
        ),
        (
            vec![
                "--binary",
                agent,
                "--token-file",
                &missing,
                "--root",
                &root_s,
            ],
            "not a readable file",
        ),
        (
            vec!["--binary", &missing, "--token", &token, "--root", &root_s],
            "not an executable file",
        ),
        (
            vec!["--deb", &missing, "--token", &token, "--root", &root_s],
            "no such file",
        ),
        (
            vec![
                "--binary", agent, "--token", &token, "--name", "fra 1", "--root", &root_s,
            ],
            "--name",
        ),
        (
            vec![
                "--binary", agent, "--token", &token, "--label", "novalue", "--root", &root_s,
            ],
            "KEY=VALUE",
        ),
        (
            vec![
                "--binary", agent, "--token", &token, "--label", "k=a b", "--root", &root_s,
            ],
            "--label",
        ),
        (
            vec![
                "--binary", agent, "--token", &token, "--region", "eu", "--root", &root_s,
            ],
            "the region is the token's",
        ),
        (
            vec![
                "--binary",
                agent,
                "--token",
                &token,
                "--coordinator",
                "other.example.com",
                "--root",
                &root_s,
            ],
            "names another coordinator",
        ),
        (
            vec!["--binary", agent, "--token", &token, "--root", &missing],
            "not a directory",
        ),
        (
            vec![
                "--binary",
                agent,
                "--token",
                &token,
                "--frobnicate",
                "--root",
                &root_s,
            ],
            "unknown argument: --frobnicate",
        ),
        (vec!["--binary", agent, "--token"], "--token needs a value"),
    ];
    for (args, expected) in cases {
        let output = install(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", said(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        // The secret is never echoed back.
        assert!(!stderr.contains("not-a-real-secret"), "{args:?}: {stderr}");
        assert!(
            std::fs::read_dir(&root).unwrap().next().is_none(),
            "{args:?} wrote into the root"
        );
    }
    let help = install(&["--help"]);
    assert!(help.status.success(), "{}", said(&help));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--deb",
        "--binary",
        "--token-file",
        "--coordinator",
        "--name",
        "--label",
        "--root",
    ] {
        assert!(text.contains(flag), "--help does not teach {flag}");
    }
}

#[test]
fn shellcheck_finds_nothing_in_the_install_script() {
    let test = "shellcheck_finds_nothing_in_the_install_script";
    if !have_tool(test, "shellcheck", "shellcheck") {
        return;
    }
    let output = run("shellcheck", &["--shell=sh", "deploy/install-agent.sh"]);
    assert!(output.status.success(), "{}", said(&output));
}

/// deploy/walkthrough.sh is run by hand (it needs root, debootstrap and
/// systemd-nspawn), so nothing else would notice it rot.
#[test]
fn shellcheck_finds_nothing_in_the_walkthrough() {
    let test = "shellcheck_finds_nothing_in_the_walkthrough";
    if !have_tool(test, "shellcheck", "shellcheck") {
        return;
    }
    let output = run("shellcheck", &["deploy/walkthrough.sh"]);
    assert!(output.status.success(), "{}", said(&output));
}

#[test]
fn install_script_dry_run_from_a_deb_enables_the_packaged_unit() {
    let test = "install_script_dry_run_from_a_deb_enables_the_packaged_unit";
    if !have_tool(test, "dpkg-deb", "dpkg") {
        return;
    }
    // A stand-in for the vantage-agent package: the binary (a stub: the
    // script does not run a packaged one) and the unit where debhelper
    // puts it.
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("pkg");
    for dir in ["DEBIAN", "usr/bin", "lib/systemd/system"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::write(
        tree.join("DEBIAN/control"),
        "Package: vantage-agent\nVersion: 0.1.0\nArchitecture: all\n\
         Maintainer: lab <lab@example.com>\nDescription: stand-in for the lab\n",
    )
    .unwrap();
    let stub = tree.join("usr/bin/vantage-agent");
    std::fs::write(&stub, "#!/bin/sh\necho vantage-agent 0.1.0\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(
        unit_path("vantage-agent.service"),
        tree.join("lib/systemd/system/vantage-agent.service"),
    )
    .unwrap();
    let deb = work.path().join("vantage-agent_0.1.0_all.deb");
    let built = run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-Znone",
            "--build",
            tree.to_str().unwrap(),
            deb.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", said(&built));

    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let args = [
        "--deb",
        deb.to_str().unwrap(),
        "--token",
        &fake_token(),
        "--root",
        root.to_str().unwrap(),
    ];
    let first = install(&args);
    assert!(first.status.success(), "{}", said(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("would run: apt-get install -y"), "{stdout}");
    assert_eq!(mode(&root.join("usr/bin/vantage-agent")), 0o755);
    assert_eq!(mode(&root.join("etc/vantage/agent.token")), 0o600);
    // The package's unit is the one enabled; none is added in /etc.
    assert!(!root
        .join("etc/systemd/system/vantage-agent.service")
        .exists());
    let link = root.join("etc/systemd/system/multi-user.target.wants/vantage-agent.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/lib/systemd/system/vantage-agent.service")
    );
    let before = snapshot(&root);
    let second = install(&args);
    assert!(second.status.success(), "{}", said(&second));
    // dpkg-deb unpacks again (fresh mtimes on the package's files): compare
    // what the files hold and their modes.
    let strip = |tree: Tree| -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
        tree.into_iter()
            .map(|(path, (mode, _, _, len, content))| (path, (mode, len, content)))
            .collect()
    };
    assert_eq!(
        strip(snapshot(&root)),
        strip(before),
        "the second run changed the tree"
    );
}
