//! `hostel image`: the images VMs boot from, and the tasks that build or import them.

use super::files::absolute;
use super::output::{self, Column, DescribeFormat, Format};
use super::parse;
use crate::client::Api;
use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use hostel_api::public::*;
use hostel_model::format_mib;

#[derive(Subcommand)]
pub enum Cmd {
    /// Images VMs boot from.
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
pub enum ImageCmd {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Build an image from a recipe: `tiny` (Debian's cloud kernel + a busybox
    /// initramfs) or `debian` (a bootable Debian from the mirror, with cloud-init).
    Build {
        recipe: String,
        #[arg(long)]
        name: Option<String>,
        /// Debian suite (debian recipe).
        #[arg(long)]
        suite: Option<String>,
        /// Extra packages, comma-separated (debian recipe).
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Disk size, like 4G (debian recipe).
        #[arg(long, value_parser = parse::size_mib)]
        size: Option<u64>,
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Import a raw, qcow2, vmdk, vdi or vhdx file (a path on the host, or an http(s)
    /// URL) as an image.
    Import { name: String, file: String },
    /// One image, whole.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: DescribeFormat,
    },
    /// Delete an image no VM uses (every host's copy of it).
    Delete { name: String },
    /// Copy an image to a host (or, with --all, every connected host) ahead of its first use there;
    /// without this it is copied when a VM there first needs it.
    Push {
        name: String,
        /// The host to copy it to.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        host: Option<String>,
        /// Every connected host without a copy.
        #[arg(long)]
        all: bool,
    },
}

const IMAGE_COLUMNS: &[Column<Image>] = &[
    ("NAME", |i| i.name.clone()),
    ("KIND", |i| i.kind.as_str().to_string()),
    ("FORMAT", |i| i.format.clone()),
    ("SIZE", |i| format_mib(i.size_bytes.div_ceil(1 << 20))),
    ("SHA256", |i| i.sha256.chars().take(12).collect()),
    ("USED BY", |i| i.used_by.join(",")),
    ("HOSTS", |i| {
        i.hosts
            .iter()
            .map(|c| match c.state.as_str() {
                "ready" => c.host.clone(),
                s => format!("{} ({s})", c.host),
            })
            .collect::<Vec<_>>()
            .join(",")
    }),
];

pub async fn run(cmd: Cmd) -> Result<()> {
    let api = Api::new()?;
    let Cmd::Image(cmd) = cmd;
    match cmd {
        ImageCmd::List { output } => {
            let images: Vec<Image> = api.get("/api/v1/images").await?;
            output::list(output, &images, IMAGE_COLUMNS)
        }
        ImageCmd::Build {
            recipe,
            name,
            suite,
            packages,
            size,
            mirror,
        } => {
            let req = BuildImageRequest {
                recipe,
                name,
                suite,
                packages,
                size_mib: size,
                mirror,
            };
            let t: Task = api.post("/api/v1/images/build", &req).await?;
            wait_task(&api, t).await
        }
        ImageCmd::Describe { name, output } => {
            let images: Vec<Image> = api.get("/api/v1/images").await?;
            let img = images
                .into_iter()
                .find(|i| i.name == name)
                .ok_or_else(|| anyhow!("there is no image named {name:?}"))?;
            output::describe(output, &img)
        }
        ImageCmd::Import { name, file } => {
            let url = file.starts_with("http://") || file.starts_with("https://");
            if file.contains("://") && !url {
                bail!(
                    "{file}: only http and https URLs can be imported from; or give a file's path"
                );
            }
            let path = if url {
                file
            } else {
                absolute(std::path::Path::new(&file))?
            };
            let req = ImportImageRequest { name, path };
            let t: Task = api.post("/api/v1/images/import", &req).await?;
            wait_task(&api, t).await
        }
        ImageCmd::Delete { name } => {
            api.delete(&format!("/api/v1/images/{name}")).await?;
            println!("deleted image {name}");
            Ok(())
        }
        ImageCmd::Push { name, host, all } => {
            // `--all` (clap requires it without `--host`) is the request without a host.
            let _ = all;
            let req = PushImageRequest { host };
            let path = format!(
                "/api/v1/images/{}/push",
                hostel_api::agent::endpoints::encode_segment(&name)
            );
            let tasks: Vec<Task> = api.post(&path, &req).await?;
            if tasks.is_empty() {
                println!("image {name}: every host asked for has a copy already");
            }
            for t in tasks {
                wait_task(&api, t).await?;
            }
            Ok(())
        }
    }
}

/// Follows a task to its end with a progress bar (plain words when not on a terminal).
pub(super) async fn wait_task(api: &Api, task: Task) -> Result<()> {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut t = task;
    loop {
        bar.set_position((t.progress * 100.0) as u64);
        bar.set_message(t.message.clone());
        match t.state {
            TaskState::Running => {}
            TaskState::Succeeded => {
                let done = format!("{} {}: {}", t.kind, t.target, t.message);
                if bar.is_hidden() {
                    // Not a terminal: no bar was drawn, so say it in plain words.
                    println!("{done}");
                }
                bar.finish_with_message(done);
                return Ok(());
            }
            TaskState::Failed => {
                bar.abandon();
                bail!(
                    "{} {} failed: {}",
                    t.kind,
                    t.target,
                    t.error.unwrap_or_default()
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        t = api.get(&format!("/api/v1/tasks/{}", t.id)).await?;
    }
}
