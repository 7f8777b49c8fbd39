//! Rebalancing: a plan of live migrations that evens out memory and vCPU load across
//! the hosts, scored like Ganeti's hbal: the standard deviation of each resource's use
//! (the share of the host's memory promised to running VMs, and vCPUs per host CPU),
//! added up. A move is taken only if it lowers the score by at least the minimum gain,
//! leaves no host over its memory, and keeps anti-affinity groups apart; the best move
//! is taken first, again and again, up to a bound. `--dry-run` shows the plan; otherwise
//! it is applied as migrations, one at a time, in a task.

use crate::context::Ctx;
use crate::Controller;
use hostel_api::public::*;
use hostel_model::VmState;
use std::collections::HashMap;
use std::sync::Arc;

type Res<T> = crate::error::Result<T>;

/// A move must lower the score by at least this much, unless asked otherwise.
const DEFAULT_MIN_GAIN: f64 = 0.01;
/// The most moves one plan holds.
const MAX_MOVES: usize = 50;

/// A host as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlanHost {
    pub id: String,
    pub memory_mib: u64,
    pub cpus: u32,
}

/// A running VM as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlanVm {
    pub name: String,
    pub host: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub anti_affinity: Option<String>,
    /// Other VMs of its anti-affinity group are not moved by this plan, but hold their
    /// host; a VM that cannot move live (snapshots) holds its host too.
    pub movable: bool,
    /// Hosts it cannot run on (their QEMU lacks its machine type or CPU model).
    pub unfit: Vec<String>,
}

fn stdev(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// The cluster's score for VMs placed as `at` says (VM index → host index).
fn score(hosts: &[PlanHost], vms: &[PlanVm], at: &[usize]) -> f64 {
    let mut mem = vec![0u64; hosts.len()];
    let mut cpu = vec![0u64; hosts.len()];
    for (v, &h) in vms.iter().zip(at) {
        mem[h] += v.memory_mib;
        cpu[h] += v.vcpus as u64;
    }
    let m: Vec<f64> = hosts
        .iter()
        .zip(&mem)
        .map(|(h, &u)| u as f64 / h.memory_mib.max(1) as f64)
        .collect();
    let c: Vec<f64> = hosts
        .iter()
        .zip(&cpu)
        .map(|(h, &u)| u as f64 / h.cpus.max(1) as f64)
        .collect();
    stdev(&m) + stdev(&c)
}

/// The moves, best first, and the score before and after them.
pub(crate) fn plan(
    hosts: &[PlanHost],
    vms: &[PlanVm],
    min_gain: f64,
) -> (f64, f64, Vec<(usize, usize, usize)>) {
    let index: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    let mut at: Vec<usize> = vms
        .iter()
        .map(|v| index.get(v.host.as_str()).copied().unwrap_or(usize::MAX))
        .collect();
    // VMs on hosts the plan does not consider (offline, draining) are left alone.
    let known: Vec<bool> = at.iter().map(|&h| h != usize::MAX).collect();
    for a in at.iter_mut() {
        if *a == usize::MAX {
            *a = 0;
        }
    }
    let live: Vec<PlanVm> = vms
        .iter()
        .zip(&known)
        .filter(|(_, k)| **k)
        .map(|(v, _)| v.clone())
        .collect();
    let mut at: Vec<usize> = at
        .into_iter()
        .zip(&known)
        .filter(|(_, k)| **k)
        .map(|(a, _)| a)
        .collect();
    let before = score(hosts, &live, &at);
    let mut now = before;
    let mut moves = Vec::new();
    while moves.len() < MAX_MOVES {
        let used = |h: usize, at: &[usize]| -> u64 {
            live.iter()
                .zip(at)
                .filter(|(_, &a)| a == h)
                .map(|(v, _)| v.memory_mib)
                .sum()
        };
        let mut best: Option<(f64, usize, usize)> = None;
        for (vi, v) in live.iter().enumerate().filter(|(_, v)| v.movable) {
            let from = at[vi];
            for to in 0..hosts.len() {
                if to == from
                    || used(to, &at) + v.memory_mib > hosts[to].memory_mib
                    || v.unfit.contains(&hosts[to].id)
                {
                    continue;
                }
                let apart = v.anti_affinity.as_ref().is_none_or(|g| {
                    !live.iter().zip(&at).any(|(o, &a)| {
                        a == to && o.name != v.name && o.anti_affinity.as_ref() == Some(g)
                    })
                });
                if !apart {
                    continue;
                }
                at[vi] = to;
                let s = score(hosts, &live, &at);
                at[vi] = from;
                if best.is_none_or(|b| s < b.0) {
                    best = Some((s, vi, to));
                }
            }
        }
        match best {
            Some((s, vi, to)) if now - s >= min_gain => {
                moves.push((vi, at[vi], to));
                at[vi] = to;
                now = s;
            }
            _ => break,
        }
    }
    // Indexes into `vms`, not the filtered list.
    let back: Vec<usize> = known
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .map(|(i, _)| i)
        .collect();
    let moves = moves.into_iter().map(|(v, f, t)| (back[v], f, t)).collect();
    (before, now, moves)
}

impl Controller {
    /// Plans moves that even out the hosts' load (admins); unless `dry_run`, applies them
    /// as live migrations in a task.
    pub async fn rebalance(
        self: &Arc<Self>,
        ctx: &Ctx,
        req: RebalanceRequest,
    ) -> Res<RebalancePlan> {
        ctx.require_admin()?;
        ctx.params(serde_json::json!({"dry_run": req.dry_run, "min_gain": req.min_gain}));
        let min_gain = req.min_gain.unwrap_or(DEFAULT_MIN_GAIN);
        if !(0.0..=1.0).contains(&min_gain) {
            return Err(hostel_model::Invalid::new(
                "min_gain",
                format!("{min_gain}: a gain is between 0 and 1"),
            )
            .into());
        }
        let records = self.store.hosts().await?;
        let hosts: Vec<PlanHost> = records
            .clone()
            .into_iter()
            .filter(|h| self.is_online(&h.id) && h.drain.is_empty())
            .map(|h| PlanHost {
                id: h.id,
                memory_mib: h.memory_mib,
                cpus: h.cpus,
            })
            .collect();
        let mut vms = Vec::new();
        for r in self
            .store
            .vms_page(&hostel_store::VmPageQuery {
                limit: u32::MAX,
                ..Default::default()
            })
            .await?
        {
            let v = r.vm;
            if !matches!(v.state, VmState::Running | VmState::Paused) {
                continue;
            }
            let movable = self.store.snapshots_of(&v.id).await?.is_empty();
            let source = records.iter().find(|h| Some(&h.id) == v.host_id.as_ref());
            let unfit = records
                .iter()
                .filter(|t| {
                    source.is_some_and(|s| crate::platform::check_movable(&v, s, t, true).is_err())
                })
                .map(|t| t.id.clone())
                .collect();
            vms.push(PlanVm {
                unfit,
                name: v.name,
                host: v.host_id.unwrap_or_default(),
                memory_mib: v.max_memory_mib,
                vcpus: v.vcpus,
                anti_affinity: v.anti_affinity,
                movable,
            });
        }
        let (before, after, moves) = plan(&hosts, &vms, min_gain);
        let moves: Vec<PlannedMove> = moves
            .into_iter()
            .map(|(v, f, t)| PlannedMove {
                vm: vms[v].name.clone(),
                from: hosts[f].id.clone(),
                to: hosts[t].id.clone(),
                memory_mib: vms[v].memory_mib,
            })
            .collect();
        let task = if req.dry_run || moves.is_empty() {
            None
        } else {
            Some(self.apply_moves(ctx, &moves).await?)
        };
        Ok(RebalancePlan {
            score_before: before,
            score_after: after,
            moves,
            task,
        })
    }

    /// Runs a plan's moves one after another in a task; one that fails is reported and
    /// the rest go on.
    async fn apply_moves(self: &Arc<Self>, ctx: &Ctx, moves: &[PlannedMove]) -> Res<Task> {
        let task = self
            .new_task(
                ctx,
                "rebalance",
                "the cluster",
                &format!("{} move(s)", moves.len()),
            )
            .await?;
        let caller = crate::drain::caller_of(ctx)?;
        let (me, id, moves) = (self.clone(), task.id.clone(), moves.to_vec());
        tokio::spawn(async move {
            let ctx = Ctx::user(caller, "rebalance");
            let mut out = Vec::new();
            for m in moves {
                let req = MigrateRequest {
                    to: Some(m.to.clone()),
                    ..Default::default()
                };
                let r = match me.migrate_vm(&ctx, &m.vm, req).await {
                    Ok(t) => me.wait_task(&t.id).await,
                    Err(e) => Err(e),
                };
                out.push(match r {
                    Ok(how) => format!("{}: to {}, {how}", m.vm, m.to),
                    Err(e) => format!("{}: stays: {}", m.vm, e.message()),
                });
            }
            me.finish_report(&id, 0, out).await;
        });
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> PlanHost {
        PlanHost {
            id: id.into(),
            memory_mib: 4096,
            cpus: 4,
        }
    }

    fn vm(name: &str, host: &str, mem: u64) -> PlanVm {
        PlanVm {
            name: name.into(),
            host: host.into(),
            memory_mib: mem,
            vcpus: 1,
            anti_affinity: None,
            movable: true,
            unfit: Vec::new(),
        }
    }

    #[test]
    fn an_uneven_cluster_is_evened_out_and_an_even_one_left_alone() {
        let hosts = [host("a"), host("b")];
        let vms: Vec<PlanVm> = (0..4).map(|i| vm(&format!("v{i}"), "a", 512)).collect();
        let (before, after, moves) = plan(&hosts, &vms, 0.01);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.iter().all(|&(_, f, t)| f == 0 && t == 1));
        assert!(after < before && after < 1e-9, "{before} → {after}");
        let even = [vm("x", "a", 512), vm("y", "b", 512)];
        assert!(plan(&hosts, &even, 0.01).2.is_empty());
        // VMs that cannot run on b (its QEMU lacks their machine type or CPU model)
        // stay where they are, however uneven.
        let pinned: Vec<PlanVm> = (0..4)
            .map(|i| PlanVm {
                unfit: vec!["b".into()],
                ..vm(&format!("p{i}"), "a", 512)
            })
            .collect();
        assert!(plan(&hosts, &pinned, 0.01).2.is_empty());
    }

    #[test]
    fn no_move_overfills_a_host_or_joins_an_anti_affinity_group() {
        let hosts = [host("a"), host("b")];
        // b has room for nothing more.
        let mut vms = vec![
            vm("big", "b", 4096),
            vm("v1", "a", 1024),
            vm("v2", "a", 1024),
        ];
        assert!(
            plan(&hosts, &vms, 0.0).2.is_empty(),
            "b is full, a too small for big"
        );
        // With room, two VMs of one group never share b.
        vms[0] = vm("small", "b", 256);
        let three = [host("a"), host("b"), host("c")];
        for v in vms.iter_mut().skip(1) {
            v.anti_affinity = Some("web".into());
        }
        vms.push(PlanVm {
            anti_affinity: Some("web".into()),
            ..vm("w3", "c", 1024)
        });
        let (_, _, moves) = plan(&three, &vms, 0.0);
        let mut at: Vec<usize> = vec![1, 0, 0, 2];
        for (v, _, t) in &moves {
            at[*v] = *t;
        }
        for h in 0..3 {
            let n = (1..4).filter(|&v| at[v] == h).count();
            assert!(n <= 1 || h == 0, "group web shares host {h}: {moves:?}");
        }
    }
}
