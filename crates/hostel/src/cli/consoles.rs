//! `hostel console`: attach to a VM's serial console, print its log, or get a browser
//! console's address.

use super::output::{self, Format};
use crate::client::{vm_path, Api};
use crate::console;
use anyhow::Result;
use clap::Subcommand;
use hostel_api::public::*;

#[derive(Subcommand)]
pub enum Cmd {
    /// Attach to a VM's serial console (Ctrl-] detaches), or print its log.
    Console {
        name: String,
        /// Print the end of the console log (kept, size-bounded and rotated, while the VM
        /// is stopped too) instead of attaching.
        #[arg(long)]
        log: bool,
        /// With --log: how many lines.
        #[arg(long, default_value_t = 50, requires = "log")]
        lines: usize,
        /// Print the address of a browser page for the console instead of attaching: the
        /// serial console in xterm.js, or with --vga the display in noVNC. The address
        /// holds a ticket good for one connection within 30 s.
        #[arg(long, conflicts_with = "log")]
        web: bool,
        /// With --web: the VGA display rather than the serial console.
        #[arg(long, requires = "web")]
        vga: bool,
        /// With --web: `-o json` prints the whole ticket.
        #[arg(short, long, value_enum, requires = "web")]
        output: Option<Format>,
    },
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    let Cmd::Console {
        name,
        log,
        lines,
        web,
        vga,
        output,
    } = cmd;
    if web {
        let req = ConsoleTicketRequest {
            console: if vga {
                ConsoleKind::Vga
            } else {
                ConsoleKind::Serial
            },
            ttl_seconds: None,
        };
        let t: ConsoleTicket = api
            .post(&format!("{}/console/ticket", vm_path(&name)), &req)
            .await?;
        output::show(output.unwrap_or(Format::Table), &t, |t| {
            println!("{}{}", api.cfg.url.trim_end_matches('/'), t.page);
            eprintln!(
                "open it within {} s; it is good for one connection",
                t.expires_in_seconds
            );
        })
    } else if log {
        let log: LogLines = api
            .get(&format!("{}/console/log?lines={lines}", vm_path(&name)))
            .await?;
        log.lines.iter().for_each(|l| println!("{l}"));
        Ok(())
    } else {
        console::attach(&api, &name).await
    }
}
