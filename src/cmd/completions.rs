//! `kgate completions SHELL` and `kgate man`: shell completions and man pages generated from the
//! clap definition of the CLI (`main.rs` hands it over), so they never drift from `--help`.
//! `scripts/install` writes both under a prefix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// The shells `kgate completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// bash (bash-completion 2: `$PREFIX/share/bash-completion/completions/kgate`).
    Bash,
    /// zsh (`_kgate` in a directory on `$fpath`).
    Zsh,
    /// fish (`$PREFIX/share/fish/vendor_completions.d/kgate.fish`).
    Fish,
}

/// `kgate completions`' arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `kgate man`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write `kgate.1` and one page per subcommand (`kgate-run.1`, `kgate-topics-list.1`, …)
    /// into this directory instead of printing `kgate.1` to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The completion script of `shell` for `cli`.
pub fn completions(mut cli: clap::Command, shell: Shell) -> Vec<u8> {
    use clap_complete::Shell as S;
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    let name = cli.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli, name, &mut out);
    out
}

/// `kgate completions SHELL`: prints the script.
pub fn completions_main(cli: clap::Command, args: CompletionsArgs) -> ExitCode {
    use std::io::Write;
    let script = completions(cli, args.shell);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate completions: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The roff man page of `cmd` (its name as given).
pub fn man_page(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(out)
}

/// Writes `<name>.1` for `cmd` and, recursively, `<name>-<sub>.1` for each visible subcommand
/// into `dir`; returns the files written.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

fn write_tree(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // The page is titled with the full name (`kgate-topics-list`), as `man kgate-topics-list`
    // finds it. clap names are `&'static str` (without its `string` feature): a few dozen short
    // names leak once in a command that exits right after.
    let title: &'static str = Box::leak(name.to_string().into_boxed_str());
    let page = cmd.clone().name(title).bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, man_page(page)?)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_tree(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

/// `kgate man [--dir DIR]`: prints `kgate.1`, or writes every page into `DIR`.
pub fn man_main(cli: clap::Command, args: ManArgs) -> ExitCode {
    use std::io::Write;
    let result = match &args.dir {
        None => man_page(cli).and_then(|page| Ok(std::io::stdout().write_all(&page)?)),
        Some(dir) => write_man_pages(cli, dir).map(|files| {
            println!("{} man pages written to {}", files.len(), dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate man: {e:#}");
            ExitCode::FAILURE
        }
    }
}
