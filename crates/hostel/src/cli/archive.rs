//! `hostel export VM FILE` and `hostel import-vm FILE`: a VM moved between
//! installations as one archive (its definition, its disks, their SHA-256), with a
//! progress bar. `-` is standard output or input, for a pipe (`hostel export web - |
//! ssh other hostel import-vm -`).

use super::output::{self, Format};
use crate::client::{vm_path, Api};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;
use hostel_api::public::{ImportVmQuery, ImportedVm};
use hostel_model::archive::{self, Entry};
use std::io::Write;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

#[derive(Subcommand)]
pub enum Cmd {
    /// Write a stopped VM to FILE as one archive (a tar: its definition, each disk
    /// standing alone, their SHA-256), for `hostel import-vm` on another installation.
    /// FILE `-`: standard output.
    Export { vm: String, file: PathBuf },
    /// Make the VM of an archive `hostel export` wrote, charged to your quota: its disks
    /// are stored as they arrive and every sum is checked; on any failure nothing is
    /// left. FILE `-`: standard input.
    ImportVm {
        file: PathBuf,
        /// Its name here (default: the name in the archive).
        #[arg(long)]
        name: Option<String>,
        /// Put every NIC on this network (default: the networks the archive names).
        #[arg(long)]
        network: Option<String>,
        /// The pool its disks go to (default: the host's).
        #[arg(long)]
        pool: Option<String>,
        /// Start it once imported.
        #[arg(long)]
        start: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    match cmd {
        Cmd::Export { vm, file } => export(&api, &vm, &file).await,
        Cmd::ImportVm {
            file,
            name,
            network,
            pool,
            start,
            output,
        } => {
            let q = ImportVmQuery {
                name,
                network,
                pool,
                start,
            };
            let made = import(&api, &file, &q).await?;
            output::show(output, &made, |m| {
                println!(
                    "VM {} imported: {} disk(s), {} MiB of memory{}",
                    m.vm.name,
                    m.vm.disks.len(),
                    m.vm.memory.max_mib,
                    if m.vm.state == hostel_model::VmState::Running {
                        ", running"
                    } else {
                        ""
                    }
                );
                for n in &m.notes {
                    println!("note: {n}");
                }
            })
        }
    }
}

fn bar(len: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:16} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

async fn export(api: &Api, vm: &str, file: &PathBuf) -> Result<()> {
    let to_stdout = file.as_os_str() == "-";
    let part = file.with_extension("part");
    let resp = api.get_stream(&format!("{}/export", vm_path(vm))).await?;
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&part).with_context(|| format!("{}", part.display()))?,
        ))
    };
    let bar = bar(0);
    let mut watch = TarWatch::default();
    let mut body = resp.bytes_stream();
    let result = async {
        while let Some(piece) = body.next().await {
            let piece = piece.context("the export broke off")?;
            for (name, size) in watch.feed(&piece).map_err(anyhow::Error::msg)? {
                bar.set_message(name);
                bar.set_length(size);
                bar.set_position(0);
            }
            bar.set_position(watch.in_file);
            out.write_all(&piece)?;
        }
        out.flush()?;
        if !watch.ended {
            bail!("the export broke off before the archive's end");
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    drop(out);
    if let Err(e) = result {
        if !to_stdout {
            let _ = std::fs::remove_file(&part);
        }
        return Err(e);
    }
    if !to_stdout {
        std::fs::rename(&part, file)?;
        eprintln!(
            "VM {vm} exported to {} ({} bytes)",
            file.display(),
            watch.pos
        );
    }
    Ok(())
}

async fn import(api: &Api, file: &PathBuf, q: &ImportVmQuery) -> Result<ImportedVm> {
    let from_stdin = file.as_os_str() == "-";
    let (reader, len): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, u64) = if from_stdin {
        (Box::new(tokio::io::stdin()), 0)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("{}", file.display()))?;
        let len = f.metadata().await?.len();
        (Box::new(f), len)
    };
    let bar = bar(len);
    bar.set_message("sending");
    let sent = bar.clone();
    let body = futures::stream::unfold(reader, move |mut r| {
        let sent = sent.clone();
        async move {
            let mut buf = vec![0u8; 1 << 20];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    sent.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), r))
                }
                Err(e) => Some((Err(e), r)),
            }
        }
    });
    let mut query = vec![];
    for (k, v) in [
        ("name", &q.name),
        ("network", &q.network),
        ("pool", &q.pool),
    ] {
        if let Some(v) = v {
            query.push(format!(
                "{k}={}",
                hostel_api::agent::endpoints::encode_segment(v)
            ));
        }
    }
    if q.start {
        query.push("start=true".into());
    }
    let path = if query.is_empty() {
        "/api/v1/import/vm".to_string()
    } else {
        format!("/api/v1/import/vm?{}", query.join("&"))
    };
    let made = api
        .post_stream(
            &path,
            "application/octet-stream",
            reqwest::Body::wrap_stream(body),
        )
        .await;
    bar.finish_and_clear();
    made
}

/// Follows an archive's headers as its bytes pass, for the progress bar, and tells
/// whether its end came.
#[derive(Default)]
struct TarWatch {
    /// Bytes seen.
    pos: u64,
    /// Where the next header starts.
    next_header: u64,
    head: Vec<u8>,
    /// Bytes of the current file seen.
    in_file: u64,
    file_start: u64,
    ended: bool,
}

impl TarWatch {
    /// Takes the next piece; gives each file that starts in it (name, size).
    fn feed(&mut self, piece: &[u8]) -> Result<Vec<(String, u64)>, String> {
        let mut started = Vec::new();
        let end = self.pos + piece.len() as u64;
        while !self.ended && self.next_header < end {
            let from = (self.next_header.max(self.pos) - self.pos) as usize;
            let want = archive::BLOCK - self.head.len();
            let to = (from + want).min(piece.len());
            self.head.extend_from_slice(&piece[from..to]);
            if self.head.len() < archive::BLOCK {
                break;
            }
            let block: [u8; archive::BLOCK] = self.head[..].try_into().expect("a block");
            self.head.clear();
            let at = self.pos + to as u64;
            match archive::parse_header(&block)? {
                Entry::End => self.ended = true,
                Entry::File { name, size } => {
                    self.file_start = at;
                    self.next_header = at + size + archive::padding(size) as u64;
                    started.push((name, size));
                }
            }
        }
        self.pos = end;
        self.in_file = self.pos.saturating_sub(self.file_start);
        Ok(started)
    }
}
