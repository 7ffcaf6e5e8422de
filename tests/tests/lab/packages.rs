//! The Debian packages are what a host can install (issue #12, item 2):
//! `vantage` and `vantage-agent`, as `deploy/debian/build-packages.sh`
//! builds them with cargo-deb, carry the binary in /usr/bin, deploy/systemd's
//! units byte for byte, a man page for every page the units name, bash, zsh
//! and fish completions, the copyright and changelog, and maintainer scripts
//! in which cargo-deb filled `#DEBHELPER#` (the coordinator's postinst also
//! creates the system user `vantage`); the extracted binaries run; and
//! `deploy/install-agent.sh --deb` in its dry mode installs the real agent
//! package and enables the unit it carries.
//!
//! These tests build nothing: a release build inside `cargo test` would
//! take minutes and fight the test run for the CPU. They read the packages
//! in `VANTAGE_DEB_DIR` (`deploy/debian/build-packages.sh` writes them, and
//! prints their paths). Without it they print `SKIPPED …`, under `CI=true`
//! too: `.ci/run` builds the packages after the whole suite, checks them
//! with lintian, then runs this module again with `VANTAGE_DEB_DIR` set, and
//! there a missing package or tool fails. The shellcheck test needs no
//! package and follows the deploy tests' rule (missing tool: SKIPPED, fails
//! under `CI=true`).

use std::path::{Path, PathBuf};

use super::deploy::{fake_token, have_tool, install, mode, repo_root, run, said, unit_path};

/// The units each package carries, by package.
const PACKAGES: [(&str, &[&str]); 2] = [
    ("vantage", &["vantage.service"]),
    (
        "vantage-agent",
        &["vantage-agent.service", "vantage-witness.service"],
    ),
];

/// Where the packages put systemd units (cargo-deb's systemd-units).
const UNIT_DIR: &str = "usr/lib/systemd/system";

/// The directory holding the built packages, or `None` (SKIPPED) when
/// `VANTAGE_DEB_DIR` is unset; a missing dpkg-deb is the deploy tests' rule.
fn deb_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("VANTAGE_DEB_DIR") else {
        eprintln!(
            "SKIPPED {test}: VANTAGE_DEB_DIR is unset (deploy/debian/build-packages.sh builds \
             the packages; .ci/run runs this module again with it after the suite)"
        );
        return None;
    };
    if !have_tool(test, "dpkg-deb", "dpkg") {
        return None;
    }
    Some(PathBuf::from(dir))
}

/// The one `PACKAGE_*.deb` in `dir`; anything else fails the test.
fn deb(dir: &Path, package: &str) -> PathBuf {
    let prefix = format!("{package}_");
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("VANTAGE_DEB_DIR={}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {package}_*.deb in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn dpkg_deb(args: &[&str]) -> String {
    let output = run("dpkg-deb", args);
    assert!(
        output.status.success(),
        "dpkg-deb {args:?}: {}",
        said(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `dpkg-deb --contents`: each entry's permissions, owner and path (without
/// the leading `.`, directories with their trailing `/`).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    dpkg_deb(&["--contents", deb.to_str().unwrap()])
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "a dpkg-deb --contents line: {line:?}");
            let path = fields[5].trim_start_matches('.').to_string();
            (fields[0].to_string(), fields[1].to_string(), path)
        })
        .collect()
}

/// The `.TH` pages a unit's `Documentation=man:NAME(1)` names.
fn documented_pages(unit: &str) -> Vec<String> {
    std::fs::read_to_string(unit_path(unit))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("Documentation="))
        .flat_map(|docs| {
            docs.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|page| {
            page.strip_prefix("man:")
                .and_then(|p| p.strip_suffix("(1)"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn each_package_carries_its_binary_units_man_pages_and_completions() {
    let test = "each_package_carries_its_binary_units_man_pages_and_completions";
    let Some(dir) = deb_dir(test) else {
        return;
    };
    for (package, units) in PACKAGES {
        let deb = deb(&dir, package);
        let entries = contents(&deb);
        let entry = |path: &str| {
            entries
                .iter()
                .find(|(_, _, p)| p == path)
                .unwrap_or_else(|| panic!("{package}: no {path} in {entries:#?}"))
        };
        for (perms, owner, path) in &entries {
            // cargo-deb writes uid/gid 0 without names.
            assert!(
                owner == "0/0" || owner == "root/root",
                "{package}: {path} is {owner}'s"
            );
            assert!(
                !perms.starts_with('-') || perms.ends_with("r--r--") || perms.ends_with("r-xr-x"),
                "{package}: {path} is {perms}"
            );
        }
        assert_eq!(entry(&format!("/usr/bin/{package}")).0, "-rwxr-xr-x");
        for unit in units {
            assert_eq!(entry(&format!("/{UNIT_DIR}/{unit}")).0, "-rw-r--r--");
            for page in documented_pages(unit) {
                entry(&format!("/usr/share/man/man1/{page}.1.gz"));
            }
        }
        entry(&format!("/usr/share/man/man1/{package}.1.gz"));
        let pages = entries
            .iter()
            .filter(|(_, _, p)| p.starts_with("/usr/share/man/man1/") && p.ends_with(".1.gz"))
            .count();
        assert!(pages >= 4, "{package}: {pages} man pages");
        entry(&format!("/usr/share/bash-completion/completions/{package}"));
        entry(&format!("/usr/share/zsh/vendor-completions/_{package}"));
        entry(&format!(
            "/usr/share/fish/vendor_completions.d/{package}.fish"
        ));
        entry(&format!("/usr/share/doc/{package}/copyright"));
        entry(&format!("/usr/share/doc/{package}/changelog.Debian.gz"));

        // The control part: the package, its maintainer scripts with
        // cargo-deb's systemd fragments in place of #DEBHELPER#.
        let control = dpkg_deb(&["--field", deb.to_str().unwrap()]);
        assert!(
            control.contains(&format!("Package: {package}\n")),
            "{control}"
        );
        assert!(
            control.contains(&format!("Version: {}-1\n", env!("CARGO_PKG_VERSION"))),
            "{control}"
        );
        let work = tempfile::tempdir().unwrap();
        let control_dir = work.path().join("DEBIAN");
        dpkg_deb(&[
            "--control",
            deb.to_str().unwrap(),
            control_dir.to_str().unwrap(),
        ]);
        for script in ["postinst", "prerm", "postrm"] {
            let path = control_dir.join(script);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{package}: {script}: {e}"));
            assert_eq!(mode(&path), 0o755, "{package}: {script}");
            assert!(text.starts_with("#!/bin/sh\n"), "{package}: {script}");
            assert!(text.contains("\nset -e\n"), "{package}: {script}");
            assert!(
                !text.contains("#DEBHELPER#"),
                "{package}: {script} kept #DEBHELPER#"
            );
            let parsed = run("sh", &["-n", path.to_str().unwrap()]);
            assert!(
                parsed.status.success(),
                "{package}: {script}: {}",
                said(&parsed)
            );
            for unit in units {
                assert!(
                    text.contains(unit),
                    "{package}: {script} does not handle {unit}:\n{text}"
                );
            }
        }
        let postinst = std::fs::read_to_string(control_dir.join("postinst")).unwrap();
        // Not enabled or started on a first install (each unit needs its
        // settings or token first); an upgrade restarts a running one.
        assert!(postinst.contains("try-restart"), "{package}: {postinst}");
        assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
        if package == "vantage" {
            assert!(
                postinst.contains("adduser --quiet --system --ingroup vantage"),
                "{postinst}"
            );
            assert!(control.contains("adduser"), "Depends on adduser: {control}");
            let conffiles = std::fs::read_to_string(control_dir.join("conffiles")).unwrap();
            assert_eq!(conffiles.trim(), "/etc/default/vantage");
        } else {
            assert!(!postinst.contains("adduser"), "{postinst}");
        }
    }
}

#[test]
fn extracted_packages_run_and_carry_the_units_byte_for_byte() {
    let test = "extracted_packages_run_and_carry_the_units_byte_for_byte";
    let Some(dir) = deb_dir(test) else {
        return;
    };
    for (package, units) in PACKAGES {
        let deb = deb(&dir, package);
        let root = tempfile::tempdir().unwrap();
        dpkg_deb(&["-x", deb.to_str().unwrap(), root.path().to_str().unwrap()]);
        let binary = root.path().join("usr/bin").join(package);
        let version = run(&binary, &["--version"]);
        assert!(version.status.success(), "{package}: {}", said(&version));
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            format!("{package} {}", env!("CARGO_PKG_VERSION"))
        );
        for unit in units {
            assert_eq!(
                std::fs::read(root.path().join(UNIT_DIR).join(unit)).unwrap(),
                std::fs::read(unit_path(unit)).unwrap(),
                "{package}: {unit} differs from deploy/systemd's"
            );
        }
        // The packaged completion is the packaged binary's.
        let bash = run(&binary, &["completions", "bash"]);
        assert!(bash.status.success(), "{}", said(&bash));
        assert_eq!(
            std::fs::read(
                root.path()
                    .join("usr/share/bash-completion/completions")
                    .join(package)
            )
            .unwrap(),
            bash.stdout,
            "{package}: stale bash completion"
        );
        // A man page is gzipped roff for its command.
        let page = root
            .path()
            .join("usr/share/man/man1")
            .join(format!("{package}.1.gz"));
        let roff = run("gzip", &["-dc", page.to_str().unwrap()]);
        assert!(roff.status.success(), "{}", said(&roff));
        let roff = String::from_utf8(roff.stdout).unwrap();
        assert!(roff.contains(&format!(".TH {package} 1")), "{roff}");
    }
}

#[test]
fn install_script_dry_run_installs_the_real_agent_package_and_enables_its_unit() {
    let test = "install_script_dry_run_installs_the_real_agent_package_and_enables_its_unit";
    let Some(dir) = deb_dir(test) else {
        return;
    };
    let deb = deb(&dir, "vantage-agent");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let output = install(&[
        "--deb",
        deb.to_str().unwrap(),
        "--token",
        &fake_token(),
        "--name",
        "fra-1",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", said(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("would run: apt-get install -y"), "{stdout}");
    assert!(
        stdout.contains("would run: systemctl enable vantage-agent.service"),
        "{stdout}"
    );
    // The packaged binary, which runs.
    let binary = root.join("usr/bin/vantage-agent");
    assert_eq!(mode(&binary), 0o755);
    let version = run(&binary, &["--version"]);
    assert!(version.status.success(), "{}", said(&version));
    assert_eq!(mode(&root.join("etc/vantage/agent.token")), 0o600);
    // The package's unit is the one enabled; none is added in /etc.
    assert!(!root
        .join("etc/systemd/system/vantage-agent.service")
        .exists());
    let link = root.join("etc/systemd/system/multi-user.target.wants/vantage-agent.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/").join(UNIT_DIR).join("vantage-agent.service")
    );
    assert!(root.join(UNIT_DIR).join("vantage-witness.service").exists());
}

#[test]
fn shellcheck_finds_nothing_in_the_package_scripts() {
    let test = "shellcheck_finds_nothing_in_the_package_scripts";
    if !have_tool(test, "shellcheck", "shellcheck") {
        return;
    }
    let debian = repo_root().join("deploy/debian");
    let mut scripts = vec![debian.join("build-packages.sh")];
    for (package, _) in PACKAGES {
        for script in ["postinst", "prerm", "postrm"] {
            let path = debian.join(package).join(script);
            assert_eq!(mode(&path), 0o755, "{}", path.display());
            scripts.push(path);
        }
    }
    let args: Vec<&str> = scripts.iter().map(|p| p.to_str().unwrap()).collect();
    let output = run("shellcheck", &args);
    assert!(output.status.success(), "{}", said(&output));
}
