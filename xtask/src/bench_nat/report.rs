//! The NAT benchmark's table, `bpf_stats` table and notes: printed, and written as Markdown
//! and JSON to bench/results/<when>-nat-<threads>t.{md,json}.
use std::{fs, path::Path, process::Command};

use anyhow::Result;
use serde_json::{json, Value};

use super::{bpf_stats, Config, Run};
use crate::bench::{median, BenchArgs};

/// The router's conntrack table over the whole benchmark.
pub struct Conntrack {
    pub peak: u64,
    pub max: u64,
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
}

fn dash_unless(traced: bool, text: String) -> String {
    if traced {
        text
    } else {
        "-".into()
    }
}

/// One configuration's row of the table, and its JSON.
fn row(config: Config, runs: &[Run], untraced: &[Run]) -> (String, Value) {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.conn_per_sec).collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    let med = median(&mut rates);
    // Each run against the untraced run of its own round, then the median of those.
    let mut ratios: Vec<f64> = runs
        .iter()
        .zip(untraced)
        .map(|(r, u)| r.conn_per_sec / u.conn_per_sec)
        .collect();
    let ratio = median(&mut ratios);
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us_per_conn).collect();
    let cpu_per_conn = median(&mut cpu);
    let sum = |f: fn(&Run) -> u64| runs.iter().map(f).sum::<u64>();
    let (connections, bindings, lost) =
        (sum(|r| r.connections), sum(|r| r.bindings), sum(|r| r.lost));
    let agent_cpu: f64 = runs.iter().map(|r| r.cpu_seconds).sum();
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let per_1000 = agent_cpu / bindings.max(1) as f64 * 1e6;
    let traced = config != Config::Untraced;
    let text = format!(
        "| {} | {med:.0} | {min:.0}–{max:.0} | {} | {} | {} | {} | {} | {} |\n",
        config.name(),
        if traced {
            format!("{ratio:.2}")
        } else {
            "1.00".into()
        },
        if cpu_per_conn > 0.0 {
            format!("{cpu_per_conn:.1} µs")
        } else {
            "-".into()
        },
        dash_unless(traced, format!("{bindings} / {connections}")),
        dash_unless(traced, lost.to_string()),
        dash_unless(traced && bindings > 0, format!("{per_1000:.2} ms")),
        dash_unless(traced, format!("{:.1} MiB", rss as f64 / 1024.0)),
    );
    let value = json!({
        "configuration": config.name(),
        "median_conn_per_sec": med,
        "min_conn_per_sec": min,
        "max_conn_per_sec": max,
        "ratio": if traced { ratio } else { 1.0 },
        "ratios_per_round": ratios,
        "runs": runs.iter().map(|r| r.conn_per_sec).collect::<Vec<_>>(),
        "cpu_us_per_conn_paced": cpu_per_conn,
        "connections": connections,
        "bindings": bindings,
        "nat_ends": sum(|r| r.ends),
        "flows": sum(|r| r.flows),
        "socket_events": sum(|r| r.events),
        "lost": lost,
        "agent_cpu_ms_per_1000_bindings": per_1000,
        "agent_peak_rss_kib": rss,
        "conntrack_peak": runs.iter().map(|r| r.conntrack_peak).max().unwrap_or(0),
    });
    (text, value)
}

/// The per-program table of one traced configuration (every program that ran), busiest first.
fn programs(config: Config, runs: &[Run], table: &mut String) -> Value {
    let mut total = bpf_stats::Stats::new();
    for r in runs {
        bpf_stats::add(&mut total, &r.stats);
    }
    let connections = runs.iter().map(|r| r.connections).sum::<u64>().max(1) as f64;
    let mut progs: Vec<_> = total.into_iter().filter(|(_, s)| s.run_cnt > 0).collect();
    progs.sort_by_key(|(_, s)| std::cmp::Reverse(s.run_time_ns));
    let mut out = Vec::new();
    for ((kind, name), s) in progs {
        let per_run = s.run_time_ns as f64 / s.run_cnt as f64;
        let per_conn = s.run_time_ns as f64 / connections;
        table.push_str(&format!(
            "| {} | {name} ({kind}) | {} | {} | {:.1} | {per_run:.0} ns | {:.2} µs |\n",
            config.name(),
            s.programs,
            s.run_cnt,
            s.run_cnt as f64 / connections,
            per_conn / 1000.0,
        ));
        out.push(json!({
            "program": name, "type": kind, "loaded": s.programs, "run_cnt": s.run_cnt,
            "run_time_ns": s.run_time_ns, "ns_per_run": per_run,
            "runs_per_connection": s.run_cnt as f64 / connections, "ns_per_connection": per_conn,
        }));
    }
    json!({ "configuration": config.name(), "programs": out })
}

fn notes(c: &Conntrack) -> String {
    let full = if c.peak >= c.max && c.max > 0 {
        " — the table FILLED"
    } else {
        ""
    };
    format!(
        "\nRouter conntrack: at most {} entries of nf_conntrack_max {}{full}; during the benchmark insert_failed {}, drop {}, early_drop {} (`conntrack -S`).\n\
         Bindings reported / connections made counts `nat_binding` records against the client's connections (unpaced run and paced phase); each connection makes one binding.\n\
         `tracer nat` with flows also loads its socket probes on the syscall path (every syscall of every task on the host), `watch --nat-netns` its default socket path; `--no-flows` loads only the netfilter program.\n\
         The per-program table: `bpf_stats` run counts and times of the agent's programs over all rounds (unpaced and paced), per connection made through the router.\n",
        c.peak, c.max, c.insert_failed, c.drop, c.early_drop
    )
}

pub fn write(
    root: &Path,
    args: &BenchArgs,
    configs: &[Config],
    runs: &[Vec<Run>],
    conntrack: &Conntrack,
) -> Result<()> {
    let mut table = format!("| configuration | median conn/s | min–max | ratio to untraced (median of rounds) | CPU per connection at {} conn/s, client + server + agent (median) | bindings reported / connections made | events lost | agent CPU per 1,000 bindings | agent peak RSS |\n|---|---|---|---|---|---|---|---|---|\n", args.paced);
    let mut bpf = String::from("| configuration | program (type) | loaded | runs | runs per connection | time per run | time per connection |\n|---|---|---|---|---|---|---|\n");
    let (mut rows, mut stats) = (Vec::new(), Vec::new());
    for (config, runs_of) in configs.iter().zip(runs) {
        let (text, value) = row(*config, runs_of, &runs[0]);
        table.push_str(&text);
        rows.push(value);
        if *config != Config::Untraced {
            stats.push(programs(*config, runs_of, &mut bpf));
        }
    }
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let machine = format!(
        "{cpus} CPUs, Linux {}, nat mode: TCP connect/close forwarded through a masquerading router namespace, {} client thread(s), {} × {} s runs per configuration, interleaved",
        kernel.trim(), args.threads, args.rounds, args.seconds
    );
    let markdown = format!(
        "{machine} ({when})\n\n{table}\nbpf_stats per program:\n\n{bpf}{}",
        notes(conntrack)
    );
    println!("\n{markdown}");
    let results = root.join("bench/results");
    fs::create_dir_all(&results)?;
    let stem = format!("{when}-nat-{}t", args.threads);
    fs::write(results.join(format!("{stem}.md")), &markdown)?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let value = json!({
        "when": when, "host": host.trim(), "machine": machine, "mode": "nat",
        "threads": args.threads, "seconds": args.seconds, "rounds": args.rounds,
        "paced": args.paced, "results": rows, "bpf_stats": stats,
        "conntrack": {
            "peak": conntrack.peak, "max": conntrack.max, "insert_failed": conntrack.insert_failed,
            "drop": conntrack.drop, "early_drop": conntrack.early_drop,
        },
    });
    fs::write(
        results.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&value)?,
    )?;
    eprintln!("bench: results in {}", results.join(&stem).display());
    Ok(())
}
