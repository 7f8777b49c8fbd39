//! `hostel`: the daemon roles and the command-line client of the REST API. Parses the
//! command line and hands it to its family's module under `cli/`.

mod cli;
mod client;
mod console;
mod daemon;
mod settings;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hostel",
    version,
    about = "Self-service virtual machine hosting"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Every family's subcommands, flattened: `hostel list`, `hostel disk add`, ...
#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Roles(cli::roles::Cmd),
    #[command(flatten)]
    Vms(cli::vms::Cmd),
    #[command(flatten)]
    Consoles(cli::consoles::Cmd),
    #[command(flatten)]
    Hosts(cli::hosts::Cmd),
    #[command(flatten)]
    Images(cli::images::Cmd),
    #[command(flatten)]
    Disks(cli::disks::Cmd),
    #[command(flatten)]
    Pools(cli::pools::Cmd),
    #[command(flatten)]
    Networks(cli::networks::Cmd),
    #[command(flatten)]
    Accounts(cli::accounts::Cmd),
    #[command(flatten)]
    Usage(cli::usage::Cmd),
    #[command(flatten)]
    Xen(cli::xen::Cmd),
    #[command(flatten)]
    Backups(cli::backups::Cmd),
    #[command(flatten)]
    Limits(cli::limits::Cmd),
    #[command(flatten)]
    Archive(cli::archive::Cmd),
    /// Print the shell completion script for `hostel` (the package installs bash's and
    /// zsh's).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages of `hostel` and of each of its commands (hostel-up.1, ...)
    /// into DIR.
    Manpages { dir: PathBuf },
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Roles(c) => cli::roles::run(c).await,
        Cmd::Vms(c) => cli::vms::run(c).await,
        Cmd::Consoles(c) => cli::consoles::run(c).await,
        Cmd::Hosts(c) => cli::hosts::run(c).await,
        Cmd::Images(c) => cli::images::run(c).await,
        Cmd::Disks(c) => cli::disks::run(c).await,
        Cmd::Pools(c) => cli::pools::run(c).await,
        Cmd::Networks(c) => cli::networks::run(c).await,
        Cmd::Accounts(c) => cli::accounts::run(c).await,
        Cmd::Usage(c) => cli::usage::run(c).await,
        Cmd::Xen(c) => cli::xen::run(c).await,
        Cmd::Backups(c) => cli::backups::run(c).await,
        Cmd::Limits(c) => cli::limits::run(c).await,
        Cmd::Archive(c) => cli::archive::run(c).await,
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hostel", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Manpages { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(())
        }
    }
}

fn main() {
    // A daemon's `--config FILE` settings become flags before the command line parses.
    let args =
        settings::expand(&Cli::command(), std::env::args_os().collect()).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        });
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| {
        // A value refused by one of cli::parse's parsers exits 1, as it did when such
        // values were checked after parsing; clap's other usage errors exit 2.
        let ours = e.kind() == clap::error::ErrorKind::ValueValidation
            && std::error::Error::source(&e).is_some_and(|s| s.is::<cli::parse::BadValue>());
        if ours {
            let _ = e.print();
            std::process::exit(1);
        }
        e.exit()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Do not wait for the console's stdin thread.
    rt.shutdown_background();
}
