//! `hostel audit retention` and `hostel audit prune`: how long the audit trail keeps its
//! entries, and applying that now (admins). Reading the trail is `hostel audit`
//! (`accounts.rs`).

use super::output::{self, Format};
use crate::client::Api;
use anyhow::Result;
use clap::Subcommand;
use hostel_api::public::{AuditPruneReport, AuditRetention};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// How long entries stay in the database (admins).
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Apply the retention now (admins): entries older than it are removed, those of
    /// changes that were not refused first appended to DATA_DIR/audit-archive/. It also
    /// runs by itself every hour.
    Prune {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum RetentionCmd {
    Show {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Keep entries this many days (`--days N`), or for ever (`--forever`).
    Set {
        #[arg(long, required_unless_present = "forever", conflicts_with = "forever")]
        days: Option<u32>,
        #[arg(long)]
        forever: bool,
    },
}

const PATH: &str = "/api/v1/audit/retention";

fn print_retention(r: &AuditRetention) {
    match r.days {
        Some(d) => println!("audit entries are kept {d} days"),
        None => println!("audit entries are kept for ever"),
    }
}

pub async fn run(api: &Api, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Retention(RetentionCmd::Show { output }) => {
            let r: AuditRetention = api.get(PATH).await?;
            output::show(output, &r, print_retention)
        }
        AuditCmd::Retention(RetentionCmd::Set { days, forever: _ }) => {
            let r: AuditRetention = api.put(PATH, &AuditRetention { days }).await?;
            print_retention(&r);
            Ok(())
        }
        AuditCmd::Prune { output } => {
            let r: AuditPruneReport = api.post("/api/v1/audit/prune", &()).await?;
            output::show(output, &r, |r| match &r.before {
                None => println!("nothing pruned: audit entries are kept for ever"),
                Some(before) => {
                    println!(
                        "removed {} audit entries made before {before}; {} exported first",
                        r.removed, r.exported
                    );
                    for f in &r.files {
                        println!("  {f}");
                    }
                }
            })
        }
    }
}
