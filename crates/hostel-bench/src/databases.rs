//! The controller's database side by side (`bench/run --only databases`): the same
//! simulated fleet (1,000 SIMULATED agents, 10,000 then 100,000 VM rows) and the same
//! list, describe, create, start and destroy rows, once with `hostel up` on SQLite and
//! once on PostgreSQL (a server of the benchmark's own on this machine).

use crate::daemon::Daemon;
use crate::{fleet, fleet_records, latency_row, Row, SimFleet};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub(crate) const NOTE: &str = "The database rows run the simulated fleet twice, each time \
with a daemon of its own: `hostel up` on SQLite in its data directory (the default), then \
`hostel up --database postgres://…` on a PostgreSQL 15 server the benchmark starts on this \
machine (Debian's, default settings, reached over its unix socket). The fleet's rows are written \
straight into each database with the daemon stopped (`sqlite3`, `psql`), then the daemon \
is restarted and reconnects to every simulated host.";

/// Debian's `psql`, from the PostgreSQL installed (scripts/install-deps.sh).
pub(crate) fn psql() -> Result<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    let mut found: Vec<PathBuf> = std::fs::read_dir(base)
        .with_context(|| format!("{}: apt-get install postgresql", base.display()))?
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no psql under /usr/lib/postgresql: apt-get install postgresql")
}

pub(crate) fn rows(hostel: &Path, quick: bool) -> Result<Vec<Row>> {
    let (hosts, sizes, samples) = if quick {
        (10, vec![1_000, 2_000], 3)
    } else {
        (1_000, vec![10_000, 100_000], 10)
    };
    let pg = hostel_store::testing::PgServer::start();
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(pg.database("hostel"));
    let mut rows = Vec::new();
    for (label, database, tag) in [
        ("SQLite", None, "-sqlite"),
        ("PostgreSQL", Some(url.as_str()), "-pg"),
    ] {
        let mut d = Daemon::start_on(hostel, database, tag)?;
        let mut sim = SimFleet::start(&d, hosts)?;
        let mut join = Vec::new();
        for url in &sim.urls {
            join.push(crate::daemon::timed(|| {
                d.cli(&["host", "add", url]).map(|_| ())
            })?);
        }
        rows.push(latency_row(
            format!(
                "simulated fleet, {label}: `hostel host add`, each of {hosts} simulated hosts, CLI"
            ),
            &mut join,
            "",
        ));
        let mut had = 0;
        for (round, vms) in sizes.iter().copied().enumerate() {
            let back = fleet_records(&mut d, &sim, had, vms)?;
            rows.push(Row {
                what: format!(
                    "simulated fleet ({hosts} hosts, {vms} VMs, {label}): `hostel up` restart → every host's agent reconnected and reconciled (s)"
                ),
                hostel: format!("{back:.1}"),
                peer: "n/a".into(),
                ratio: "".into(),
                budget: "".into(),
            });
            rows.extend(fleet::fleet_on(
                &d,
                hosts,
                vms,
                samples,
                round,
                &format!(", {label}"),
            )?);
            had = vms;
        }
        let _ = sim.child.kill();
        let _ = sim.child.wait();
    }
    Ok(rows)
}
