//! Shell completions and man pages for every vantage binary, generated from
//! its own clap parser so that they can never drift from `--help`: the
//! `completions SHELL` and `man DIR` subcommands of `vantage` and
//! `vantage-agent` share these flags and writers. A package build runs
//! `BINARY man DIR` and `BINARY completions SHELL > FILE` on the binary it
//! ships.
//!
//! Generation happens in memory first: clap_complete panics on a failed
//! write, so the script is written to stdout only once it is whole, and a
//! closed pipe is an error line, not a panic.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

pub use clap_complete::Shell;

/// Flags of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for: bash, zsh, fish, elvish
    /// or powershell.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Flags of the (hidden) `man` subcommand.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing); existing
    /// pages of the same names are replaced.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The completion script of `cmd` for `shell`, named for the binary `bin`.
pub fn completion_script(mut cmd: clap::Command, bin: &str, shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut script);
    script
}

/// Prints the completion script of `cmd` for `args.shell` on stdout.
pub fn print_completions(
    cmd: clap::Command,
    bin: &str,
    args: &CompletionsArgs,
) -> anyhow::Result<()> {
    let script = completion_script(cmd, bin, args.shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("cannot write the completion script to stdout")
}

/// Writes one man page (section 1) for `cmd` and one for each of its
/// visible subcommands, at every depth (`vantage.1`, `vantage-serve.1`,
/// `vantage-token-create.1`, …) into `dir`; returns the paths written, the
/// top-level page first.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building sets each subcommand's display name (`vantage-token-create`),
    // which names its page.
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("vantage");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// `man DIR`: writes the pages and prints each path on stdout, one a line.
pub fn print_man_pages(cmd: clap::Command, args: &ManArgs) -> anyhow::Result<()> {
    let written = write_man_pages(cmd, &args.dir)?;
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display()).context("cannot write to stdout")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("sample")
            .about("A sample.")
            .subcommand(
                clap::Command::new("outer")
                    .about("Outer.")
                    .subcommand(clap::Command::new("inner").about("Inner.")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn a_page_per_visible_subcommand_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(sample(), &dir.path().join("man1")).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["sample.1", "sample-outer.1", "sample-outer-inner.1"]
        );
        let top = std::fs::read_to_string(&written[0]).unwrap();
        assert!(top.contains(".TH sample 1"), "{top}");
        assert!(top.contains("outer"), "{top}");
        assert!(!top.contains("secret"), "{top}");
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = String::from_utf8(completion_script(sample(), "sample", shell)).unwrap();
            assert!(script.contains("outer"), "{shell}: {script}");
        }
    }
}
