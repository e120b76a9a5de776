//! `cargo xtask bench --mode nat`: TCP connections forwarded through a test router that
//! masquerades them (every connection a conntrack NAT binding), untraced and with `tracer nat`
//! (and `watch --nat-netns`) watching the router, interleaved round by round as the other
//! modes are. Reports connections/s, ratios to the same round's untraced run, the bindings the
//! agent reported and lost, its CPU and RSS, CPU per connection in a paced phase, and the
//! per-program run counts and times from `bpf_stats`.
mod bpf_stats;
mod report;
mod topology;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{usage_of, wait_for, BenchArgs};
use bpf_stats::{Stats, StatsOn};
use topology::{Topology, SERVER_ADDR};

/// One way of running the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Untraced,
    Nat,
    NatNoFlows,
    WatchNat,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Nat => "tracer nat --json > file",
            Config::NatNoFlows => "tracer nat --no-flows --json > file",
            Config::WatchNat => "tracer watch --json --nat-netns > file",
        }
    }

    fn args(self, router: &str) -> Vec<String> {
        let args: &[&str] = match self {
            Config::Untraced => &[],
            Config::Nat => &["nat", "--json", "--netns", router],
            Config::NatNoFlows => &["nat", "--json", "--no-flows", "--netns", router],
            Config::WatchNat => &["watch", "--json", "--nat-netns", router],
        };
        args.iter().map(|a| a.to_string()).collect()
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    conn_per_sec: f64,
    /// Connections made in the run and its paced phase: each one binding in the router.
    connections: u64,
    bindings: u64,
    ends: u64,
    flows: u64,
    events: u64,
    lost: u64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    /// Paced phase: CPU µs per connection (client + server + agent).
    cpu_us_per_conn: f64,
    conntrack_peak: u64,
    stats: Stats,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the benchmark between runs (the children get the terminal's
/// SIGINT too), so the router's drop still runs.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Where cargo put the release binaries: `CARGO_TARGET_DIR` when set, else the workspace's.
fn release_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("release"),
        None => root.join("target/release"),
    }
}

struct Agent {
    child: Child,
    out: PathBuf,
    _stats: StatsOn,
}

fn start_agent(config: Config, tracer: &Path, dir: &Path, router: &str) -> Result<Option<Agent>> {
    if config == Config::Untraced {
        return Ok(None);
    }
    let out = dir.join("agent.out");
    let err = dir.join("agent.err");
    // On before the programs load, so their counters cover exactly this run.
    let stats = StatsOn::enable();
    let mut child = Command::new(tracer)
        .args(config.args(router))
        .stdout(Stdio::from(fs::File::create(&out)?))
        .stderr(Stdio::from(fs::File::create(&err)?))
        .spawn()
        .with_context(|| format!("starting {}", config.name()))?;
    // `nat --json` prints a ready record once its programs are linked; `watch --json` a
    // snapshot of the sockets already open after its ready record.
    let marker = match config {
        Config::WatchNat => "\"type\":\"snapshot\"",
        _ => "\"type\":\"ready\"",
    };
    let mut exited = false;
    wait_for(config.name(), || {
        exited = !matches!(child.try_wait(), Ok(None));
        exited
            || fs::read_to_string(&out)
                .unwrap_or_default()
                .contains(marker)
    })?;
    if exited {
        bail!(
            "{} exited: {}",
            config.name(),
            fs::read_to_string(&err).unwrap_or_default()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(Agent {
        child,
        out,
        _stats: stats,
    }))
}

impl Drop for Agent {
    /// A run that failed midway leaves no agent behind (stop_agent has reaped it otherwise).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops the agent and reads what it reported.
fn stop_agent(mut agent: Agent, run: &mut Run) -> Result<()> {
    let pid = agent.child.id();
    run.stats = bpf_stats::of_agent(pid);
    let (cpu, rss) = usage_of(pid);
    run.cpu_seconds = cpu;
    run.peak_rss_kib = rss;
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = agent.child.wait();
    let mut summary = None;
    for line in BufReader::new(fs::File::open(&agent.out)?).lines() {
        let line = line?;
        if line.contains("\"type\":\"nat_binding\"") {
            run.bindings += 1;
        } else if line.contains("\"type\":\"nat_end\"") {
            run.ends += 1;
        } else if line.contains("\"type\":\"flow\"") {
            run.flows += 1;
        } else if line.contains("\"type\":\"summary\"") {
            summary = serde_json::from_str::<Value>(&line).ok();
        }
    }
    let summary = summary.context("the agent printed no summary")?;
    run.events = summary["events"].as_u64().unwrap_or(0);
    run.lost = summary["lost"].as_u64().unwrap_or(0);
    Ok(())
}

/// One client run in the client namespace: (connections, connections/s, CPU seconds of the
/// client from its rusage).
fn client(
    topo: &Topology,
    loadgen: &Path,
    args: &BenchArgs,
    rate: u64,
    secs: f64,
) -> Result<(u64, f64, f64)> {
    let mut c = topo.in_client(loadgen);
    c.args([
        "tcp-to",
        SERVER_ADDR,
        &args.threads.to_string(),
        &secs.to_string(),
    ]);
    if rate > 0 {
        c.arg(rate.to_string());
    }
    // `ip netns exec` execs the load generator: the child's rusage is the load generator's.
    let child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("running loadgen tcp-to")?;
    let pid = child.id() as i32;
    let mut text = String::new();
    child
        .stdout
        .context("loadgen stdout")?
        .read_to_string(&mut text)?;
    let mut status = 0;
    // SAFETY: plain-data out-parameters that live across the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid || status != 0 {
        bail!("loadgen tcp-to failed: status {status}");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    let v: Value = serde_json::from_str(&text).context("loadgen output")?;
    let ops = v["ops"].as_u64().context("ops")?;
    Ok((ops, v["ops_per_sec"].as_f64().context("ops_per_sec")?, cpu))
}

/// One configuration once: the unpaced run, then the paced phase.
fn run_once(config: Config, ctx: &Ctx, topo: &Topology) -> Result<Run> {
    topo.flush_conntrack();
    let agent = start_agent(config, &ctx.tracer, &ctx.dir, &topo.router)?;
    let (ops, rate, _) = client(topo, &ctx.loadgen, &ctx.args, 0, ctx.args.seconds)?;
    let mut run = Run {
        conn_per_sec: rate,
        connections: ops,
        conntrack_peak: topo.conntrack_count(),
        ..Default::default()
    };
    if ctx.args.paced > 0 {
        // The agent finishes what the unpaced run left in its ring first.
        std::thread::sleep(Duration::from_millis(500));
        let agent_pid = agent.as_ref().map(|a| a.child.id());
        let before = agent_pid.map_or(0.0, |p| usage_of(p).0) + usage_of(ctx.server).0;
        let (ops, _, client_cpu) = client(
            topo,
            &ctx.loadgen,
            &ctx.args,
            ctx.args.paced,
            ctx.args.paced_seconds,
        )?;
        let after = agent_pid.map_or(0.0, |p| usage_of(p).0) + usage_of(ctx.server).0;
        run.connections += ops;
        run.cpu_us_per_conn = (client_cpu + after - before) * 1e6 / ops.max(1) as f64;
        run.conntrack_peak = run.conntrack_peak.max(topo.conntrack_count());
    }
    if let Some(agent) = agent {
        // Bindings are reported as the agent drains its ring: give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        stop_agent(agent, &mut run)?;
    }
    Ok(run)
}

/// What every run needs.
struct Ctx {
    tracer: PathBuf,
    loadgen: PathBuf,
    dir: PathBuf,
    args: BenchArgs,
    server: u32,
}

pub fn bench(root: &Path, args: &BenchArgs) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark makes namespaces and loads eBPF programs: run it as root");
    }
    catch_signals();
    let bin = release_dir(root);
    let configs = [
        Config::Untraced,
        Config::Nat,
        Config::NatNoFlows,
        Config::WatchNat,
    ];
    // The agents' output files, in a private directory (see bench.rs).
    let private = tempfile::Builder::new().prefix("tracer-bench-").tempdir()?;
    let mut topo = Topology::up()?;
    let server = topo.start_server(&bin.join("loadgen"))?;
    let ctx = Ctx {
        tracer: bin.join("tracer"),
        loadgen: bin.join("loadgen"),
        dir: private.path().to_path_buf(),
        args: args.clone(),
        server,
    };
    let failures_before = topo.conntrack_failures();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            let run = run_once(configs[i], &ctx, &topo)?;
            eprintln!(
                "bench: round {} {:<40} {:>8.0} conn/s  {:>6.1} µs CPU/conn paced  bindings {:>7} of {:>7}  lost {}  conntrack {}",
                round + 1,
                configs[i].name(),
                run.conn_per_sec,
                run.cpu_us_per_conn,
                run.bindings,
                run.connections,
                run.lost,
                run.conntrack_peak,
            );
            runs[i].push(run);
        }
    }
    let failures_after = topo.conntrack_failures();
    let conntrack = report::Conntrack {
        peak: runs
            .iter()
            .flatten()
            .map(|r| r.conntrack_peak)
            .max()
            .unwrap_or(0),
        max: topo.conntrack_max(),
        insert_failed: failures_after.0.saturating_sub(failures_before.0),
        drop: failures_after.1.saturating_sub(failures_before.1),
        early_drop: failures_after.2.saturating_sub(failures_before.2),
    };
    drop(topo);
    drop(private);
    report::write(root, args, &configs, &runs, &conntrack)
}
