//! `hostel`: the daemon roles and the command-line client of the REST API.

mod client;
mod console;
mod daemon;
mod pki;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use client::Api;
use comfy_table::{presets::NOTHING, Table};
use hostel_api::public::*;
use hostel_model::{format_mib, parse_size_mib, Policy};
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

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Table2Json {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Yaml2Json {
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything on this machine: controller, local agent, SQLite, API.
    Up {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// auto: KVM only if a test guest really boots under it, else TCG.
        #[arg(long, default_value = "auto")]
        accel: hostel_agent::AccelChoice,
        /// The unprivileged user QEMU runs as when the daemon runs as root.
        #[arg(long, default_value = "hostel-qemu")]
        qemu_user: String,
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu_binary: String,
    },
    /// List VMs.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Create a VM from an image, and start it unless --no-start.
    Create {
        name: String,
        #[arg(long)]
        image: String,
        #[arg(long, default_value = "512M")]
        memory: String,
        /// What mem-set may grow the VM to (default: --memory).
        #[arg(long)]
        max_memory: Option<String>,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// What vcpu-set may grow the VM to (default: --vcpus).
        #[arg(long)]
        max_vcpus: Option<u32>,
        /// Disk size: an overlay of a disk image, or a blank disk for a kernel image.
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        no_start: bool,
        #[arg(long, default_value = "destroy")]
        on_poweroff: String,
        #[arg(long, default_value = "restart")]
        on_reboot: String,
        #[arg(long, default_value = "destroy")]
        on_crash: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Start a stopped VM.
    Start { name: String },
    /// Reboot cleanly (ACPI power-off, then start again).
    Reboot { name: String },
    /// Pause a VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Unpause { name: String },
    /// Stop a VM at once, like pulling the plug.
    Destroy { name: String },
    /// Delete a stopped VM and its disks.
    Delete { name: String },
    /// Ask the guest to power off (ACPI).
    Shutdown {
        name: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Stop it hard if it has not powered off by the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Set a VM's memory (balloon), up to its max memory.
    MemSet { name: String, size: String },
    /// Set a VM's vCPU count (hotplug), up to its max vCPUs.
    VcpuSet { name: String, vcpus: u32 },
    /// Show a VM: definition, live state, host, accelerator, QEMU command line.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Yaml2Json,
    },
    /// Attach to a VM's serial console (Ctrl-] detaches).
    Console { name: String },
    /// Save a VM's memory state to FILE (on its host) and stop it.
    Save { name: String, file: PathBuf },
    /// Resume a VM from a file written by `save`.
    Restore { file: PathBuf },
    /// The host(s): CPUs, memory, accelerator, QEMU version, VMs running.
    Info {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// The daemon's log tail.
    Dmesg {
        #[arg(long, default_value_t = 50)]
        lines: usize,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Images VMs boot from.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Print the OpenAPI document of the REST API.
    Openapi,
}

#[derive(Subcommand)]
enum ImageCmd {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Table2Json,
    },
    /// Build an image from a recipe (`tiny`: Debian's cloud kernel + a busybox initramfs).
    Build {
        recipe: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Import a raw or qcow2 file (a path on the host) as an image.
    Import { name: String, file: PathBuf },
    /// Delete an image no VM uses.
    Delete { name: String },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Do not wait for the console's stdin thread.
    rt.shutdown_background();
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}

fn vm_table(vms: &[Vm]) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(["NAME", "STATE", "MEMORY", "VCPUS", "HOST", "IMAGE", "PID"]);
    for v in vms {
        t.add_row([
            v.name.clone(),
            v.state.to_string(),
            format!(
                "{}/{}",
                format_mib(v.memory.current_mib),
                format_mib(v.memory.max_mib)
            ),
            format!("{}/{}", v.vcpus.current, v.vcpus.max),
            v.host.clone().unwrap_or_default(),
            v.image.clone().unwrap_or_default(),
            v.qemu.pid.map(|p| p.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

fn show_vm(v: &Vm, output: Table2Json) -> Result<()> {
    match output {
        Table2Json::Json => print_json(v),
        Table2Json::Table => {
            vm_table(std::slice::from_ref(v));
            Ok(())
        }
    }
}

async fn wait_task(api: &Api, task: Task) -> Result<()> {
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
                bar.finish_with_message(format!("{} {}: done", t.kind, t.target));
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

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Up {
        data_dir,
        listen,
        accel,
        qemu_user,
        qemu_binary,
    } = cli.cmd
    {
        return daemon::up(daemon::UpOptions {
            data_dir: data_dir.unwrap_or_else(daemon::default_data_dir),
            listen,
            accel,
            qemu_user,
            qemu_binary,
            client_config: client::config_path(),
        })
        .await;
    }
    if let Cmd::Openapi = cli.cmd {
        println!("{}", hostel_controller::openapi_json());
        return Ok(());
    }
    let api = Api::new()?;
    let vm_path = |name: &str| format!("/api/v1/vms/{name}");
    let empty = serde_json::json!({});
    match cli.cmd {
        Cmd::Up { .. } | Cmd::Openapi => unreachable!(),
        Cmd::List { output } => {
            let vms: Vec<Vm> = api.get("/api/v1/vms").await?;
            match output {
                Table2Json::Json => print_json(&vms)?,
                Table2Json::Table => vm_table(&vms),
            }
        }
        Cmd::Create {
            name,
            image,
            memory,
            max_memory,
            vcpus,
            max_vcpus,
            disk,
            no_start,
            on_poweroff,
            on_reboot,
            on_crash,
            output,
        } => {
            let req = CreateVmRequest {
                name,
                image,
                memory_mib: parse_size_mib("memory", &memory)?,
                max_memory_mib: max_memory
                    .map(|m| parse_size_mib("max_memory", &m))
                    .transpose()?,
                vcpus,
                max_vcpus,
                disk_mib: disk.map(|d| parse_size_mib("disk", &d)).transpose()?,
                start: !no_start,
                on_poweroff: Policy::parse("on_poweroff", &on_poweroff)?,
                on_reboot: Policy::parse("on_reboot", &on_reboot)?,
                on_crash: Policy::parse("on_crash", &on_crash)?,
            };
            let vm: Vm = api.post("/api/v1/vms", &req).await?;
            show_vm(&vm, output)?;
        }
        Cmd::Start { name } => {
            let vm: Vm = api
                .post(&format!("{}/start", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Reboot { name } => {
            let vm: Vm = api
                .post(&format!("{}/reboot", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Pause { name } => {
            let vm: Vm = api
                .post(&format!("{}/pause", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Unpause { name } => {
            let vm: Vm = api
                .post(&format!("{}/unpause", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Destroy { name } => {
            let vm: Vm = api
                .post(&format!("{}/destroy", vm_path(&name)), &empty)
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Delete { name } => {
            api.delete(&vm_path(&name)).await?;
            println!("deleted {name}");
        }
        Cmd::Shutdown {
            name,
            timeout,
            force,
        } => {
            let vm: Vm = api
                .post(
                    &format!("{}/shutdown", vm_path(&name)),
                    &ShutdownRequest {
                        timeout_secs: timeout,
                        force,
                    },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::MemSet { name, size } => {
            let memory_mib = parse_size_mib("memory", &size)?;
            let vm: Vm = api
                .post(
                    &format!("{}/memory", vm_path(&name)),
                    &MemSetRequest { memory_mib },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::VcpuSet { name, vcpus } => {
            let vm: Vm = api
                .post(
                    &format!("{}/vcpus", vm_path(&name)),
                    &VcpuSetRequest { vcpus },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Describe { name, output } => {
            let vm: Vm = api.get(&vm_path(&name)).await?;
            match output {
                Yaml2Json::Json => print_json(&vm)?,
                Yaml2Json::Yaml => print!("{}", serde_yaml::to_string(&vm)?),
            }
        }
        Cmd::Console { name } => console::attach(&api, &name).await?,
        Cmd::Save { name, file } => {
            let path = absolute(&file)?;
            let vm: Vm = api
                .post(
                    &format!("{}/save", vm_path(&name)),
                    &SaveRequest { path: path.clone() },
                )
                .await?;
            println!(
                "saved {} to {path}; `hostel restore {path}` resumes it",
                vm.name
            );
        }
        Cmd::Restore { file } => {
            let vm: Vm = api
                .post(
                    "/api/v1/restore",
                    &RestoreRequest {
                        path: absolute(&file)?,
                    },
                )
                .await?;
            show_vm(&vm, Table2Json::Table)?;
        }
        Cmd::Info { output } => {
            let info: Info = api.get("/api/v1/info").await?;
            match output {
                Table2Json::Json => print_json(&info)?,
                Table2Json::Table => {
                    println!("hostel {}  data dir {}", info.version, info.data_dir);
                    for h in &info.hosts {
                        println!("host {}", h.name);
                        println!("  cpus:         {}", h.cpus);
                        println!(
                            "  memory:       {} total, {} given to VMs",
                            format_mib(h.memory_total_mib),
                            format_mib(h.memory_vms_mib)
                        );
                        println!("  accel:        {} ({})", h.accel.as_str(), h.accel_reason);
                        println!("  qemu:         {}", h.qemu_version);
                        println!("  kernel:       {}", h.kernel);
                        println!("  vms running:  {} of {}", h.vms_running, h.vms_total);
                    }
                }
            }
        }
        Cmd::Dmesg { lines, output } => {
            let log: LogLines = api.get(&format!("/api/v1/dmesg?lines={lines}")).await?;
            match output {
                Table2Json::Json => print_json(&log)?,
                Table2Json::Table => log.lines.iter().for_each(|l| println!("{l}")),
            }
        }
        Cmd::Image(cmd) => match cmd {
            ImageCmd::List { output } => {
                let images: Vec<Image> = api.get("/api/v1/images").await?;
                match output {
                    Table2Json::Json => print_json(&images)?,
                    Table2Json::Table => {
                        let mut t = Table::new();
                        t.load_preset(NOTHING);
                        t.set_header(["NAME", "KIND", "FORMAT", "SIZE", "SHA256", "USED BY"]);
                        for i in images {
                            t.add_row([
                                i.name,
                                i.kind.as_str().to_string(),
                                i.format,
                                format_mib(i.size_bytes.div_ceil(1 << 20)),
                                i.sha256.chars().take(12).collect(),
                                i.used_by.join(","),
                            ]);
                        }
                        println!("{t}");
                    }
                }
            }
            ImageCmd::Build { recipe, name } => {
                let t: Task = api
                    .post("/api/v1/images/build", &BuildImageRequest { recipe, name })
                    .await?;
                wait_task(&api, t).await?;
            }
            ImageCmd::Import { name, file } => {
                let t: Task = api
                    .post(
                        "/api/v1/images/import",
                        &ImportImageRequest {
                            name,
                            path: absolute(&file)?,
                        },
                    )
                    .await?;
                wait_task(&api, t).await?;
            }
            ImageCmd::Delete { name } => {
                api.delete(&format!("/api/v1/images/{name}")).await?;
                println!("deleted image {name}");
            }
        },
    }
    Ok(())
}
