//! `cargo xtask bench`: the loopback load generator untraced and with each way of running
//! tracer attached, each path's floor (its hooks with empty programs: `tracer __floor`) and
//! bpftrace printing the same tracepoints (when installed), interleaved
//! round by round (forward, then backward: A B C C B A …) so drift on a shared machine cancels.
//! Prints medians, min–max and ratios to the untraced rate, events handled and lost, the
//! agent's CPU per 1,000 events and its peak RSS; writes JSON and Markdown to bench/results/.
use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

mod phases;
use phases::{load, paced, Paced};

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Load: tcp (connect/accept/close), udp (request/response), long (messages over held
    /// connections), nat (TCP forwarded through a masquerading test router).
    #[arg(long, default_value = "tcp")]
    pub mode: String,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds (each runs every configuration once).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Leave out bpftrace even when it is installed.
    #[arg(long)]
    pub no_bpftrace: bool,
    /// Operations per second of the paced phase that follows each run (tcp and udp modes): CPU
    /// time per operation of the load generator and the agent at that rate, which moves far
    /// less than throughput on a shared machine. 0 leaves the phase out.
    #[arg(long, default_value_t = 4000)]
    pub paced: u64,
    /// Seconds of the paced phase.
    #[arg(long, default_value_t = 3.0)]
    pub paced_seconds: f64,
    /// Another build's tracer binary: an A/B of `serve` alone (untraced, this build's
    /// serve, that binary's serve), interleaved like the rest, to see whether a change moved
    /// the agent's cost.
    #[arg(long, value_name = "TRACER")]
    pub compare: Option<PathBuf>,
}

/// One way of running the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Untraced,
    Serve,
    /// `serve` from the `--compare` binary.
    ServeCompare,
    /// `serve` without the retransmit/reset/drop tracepoints: their cost, side by side.
    ServeNoHealth,
    WatchJson,
    WatchHuman,
    /// The same on the syscall path (`--syscalls`).
    ServeSyscalls,
    WatchJsonSyscalls,
    Bpftrace,
    /// Each path's hooks with programs that do nothing (`tracer __floor`).
    FloorSockets,
    FloorSyscalls,
}

impl Config {
    fn is_serve(self) -> bool {
        matches!(
            self,
            Config::Serve | Config::ServeCompare | Config::ServeNoHealth | Config::ServeSyscalls
        )
    }

    fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Serve => "tracer serve (metrics only)",
            Config::ServeCompare => "tracer serve, the --compare binary",
            Config::ServeNoHealth => "tracer serve --no-health",
            Config::WatchJson => "tracer watch --json > file",
            Config::WatchHuman => "tracer watch > file",
            Config::ServeSyscalls => "tracer serve --syscalls",
            Config::WatchJsonSyscalls => "tracer watch --json --syscalls > file",
            Config::Bpftrace => "bpftrace printing the same tracepoints",
            Config::FloorSockets => "floor: the socket path's hooks, empty programs",
            Config::FloorSyscalls => "floor: the syscall path's hooks, empty programs",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    ops_per_sec: f64,
    events: u64,
    lost: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    /// `serve`: the records the agent decoded (the rest of `events` was counted in the kernel).
    records: u64,
    /// Paced phase: CPU microseconds per operation (load generator + agent).
    cpu_us_per_op: f64,
    /// Paced phase: the agent's own CPU per 1,000 events (its share of the events from the
    /// operations: each operation makes the same events).
    agent_ms_per_1000_paced: f64,
}

const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_exit_socket, tracepoint:syscalls:sys_exit_bind,
tracepoint:syscalls:sys_exit_listen, tracepoint:syscalls:sys_exit_accept,
tracepoint:syscalls:sys_exit_accept4, tracepoint:syscalls:sys_exit_connect,
tracepoint:syscalls:sys_exit_close, tracepoint:syscalls:sys_exit_shutdown,
tracepoint:syscalls:sys_exit_sendto, tracepoint:syscalls:sys_exit_recvfrom
{ printf("%llu %d %d %s %s %d\n", nsecs, pid, tid, comm, probe, args->ret); }
tracepoint:sock:inet_sock_set_state
{ printf("%llu %d %s state %d %d %d -> %d\n", nsecs, pid, comm, args->sport, args->dport,
         args->oldstate, args->newstate); }
"#;

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// CPU seconds (user + system) and peak RSS (KiB) of a live process.
pub(crate) fn usage_of(pid: u32) -> (f64, u64) {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu / ticks, hwm)
}

struct Agent {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    metrics_addr: Option<String>,
}

fn start_agent(
    config: Config,
    tracer: &Path,
    compare: Option<&Path>,
    dir: &Path,
) -> Result<Option<Agent>> {
    let out = dir.join("agent.out");
    let err = dir.join("agent.err");
    let files = || -> Result<(fs::File, fs::File)> {
        Ok((fs::File::create(&out)?, fs::File::create(&err)?))
    };
    let (stdout, stderr) = files()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut command = match config {
        Config::Untraced => return Ok(None),
        Config::Serve | Config::ServeCompare | Config::ServeNoHealth | Config::ServeSyscalls => {
            let binary = match (config, compare) {
                (Config::ServeCompare, Some(other)) => other,
                _ => tracer,
            };
            let mut c = Command::new(binary);
            c.args(["serve", "--listen", &metrics_addr]);
            if config == Config::ServeSyscalls {
                c.arg("--syscalls");
            }
            if config == Config::ServeNoHealth {
                c.arg("--no-health");
            }
            c
        }
        Config::WatchJson | Config::WatchJsonSyscalls => {
            let mut c = Command::new(tracer);
            c.args(["watch", "--json"]);
            if config == Config::WatchJsonSyscalls {
                c.arg("--syscalls");
            }
            c
        }
        Config::WatchHuman => {
            let mut c = Command::new(tracer);
            c.args(["watch", "--no-color"]);
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_SCRIPT]);
            c
        }
        Config::FloorSockets | Config::FloorSyscalls => {
            let mut c = Command::new(tracer);
            c.arg("__floor");
            if config == Config::FloorSyscalls {
                c.arg("--syscalls");
            }
            c
        }
    };
    let child = command
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("starting {}", config.name()))?;
    let agent = Agent {
        child,
        out: out.clone(),
        err: err.clone(),
        metrics_addr: config.is_serve().then_some(metrics_addr),
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    match config {
        Config::Serve | Config::ServeCompare | Config::ServeNoHealth | Config::ServeSyscalls => {
            let addr = agent.metrics_addr.clone().unwrap();
            wait_for("tracer serve", || http_get(&addr, "/healthz").is_some())?
        }
        Config::WatchJson | Config::WatchJsonSyscalls => wait_for("tracer watch --json", || {
            read(&out).contains("\"type\":\"snapshot\"")
        })?,
        Config::WatchHuman => wait_for("tracer watch", || read(&err).contains("already open"))?,
        Config::Bpftrace => wait_for("bpftrace", || read(&out).contains("Attaching"))?,
        Config::FloorSockets | Config::FloorSyscalls => {
            wait_for("tracer __floor", || read(&err).contains("floor:"))?
        }
        Config::Untraced => {}
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(agent))
}

/// Stops the agent and reads what it handled.
fn stop_agent(config: Config, agent: Agent, run: &mut Run) -> Result<()> {
    let pid = agent.child.id();
    if let Some(addr) = &agent.metrics_addr {
        let text = http_get(addr, "/metrics").unwrap_or_default();
        // Every event counted, whether in the kernel (serve's metrics-only path) or from a
        // record the agent decoded; the records alone are reported beside the table.
        run.events = metric(&text, "tracer_socket_events_total");
        run.records = metric(&text, "tracer_events_processed_total");
        run.lost = metric(&text, "tracer_events_lost_total");
    }
    let (cpu_before_stop, rss) = usage_of(pid);
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut child = agent.child;
    let _ = child.wait();
    run.cpu_seconds = cpu_before_stop;
    run.peak_rss_kib = rss;
    let out = fs::read_to_string(&agent.out).unwrap_or_default();
    let err = fs::read_to_string(&agent.err).unwrap_or_default();
    match config {
        Config::WatchJson | Config::WatchJsonSyscalls => {
            let summary: Value = out
                .lines()
                .rev()
                .find(|l| l.contains("\"type\":\"summary\""))
                .and_then(|l| serde_json::from_str(l).ok())
                .context("watch --json printed no summary")?;
            run.events = summary["events"].as_u64().unwrap_or(0);
            run.lost = summary["lost"].as_u64().unwrap_or(0);
        }
        Config::WatchHuman => {
            // tracer: N events in X s, L lost
            let line = err
                .lines()
                .rev()
                .find(|l| l.contains(" events in "))
                .context("watch printed no summary")?;
            let words: Vec<&str> = line.split_whitespace().collect();
            run.events = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(0);
            run.lost = words
                .iter()
                .position(|w| *w == "lost")
                .and_then(|i| words.get(i - 1))
                .and_then(|w| w.parse().ok())
                .unwrap_or(0);
        }
        Config::Bpftrace => {
            run.events = out
                .lines()
                .filter(|l| l.starts_with(char::is_numeric))
                .count() as u64;
            run.lost = out
                .lines()
                .chain(err.lines())
                .filter_map(|l| {
                    l.strip_prefix("Lost ")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn bench(root: &Path, args: &BenchArgs) -> Result<()> {
    if args.mode == "nat" {
        return crate::bench_nat::bench(root, args);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root (sudo -E cargo xtask bench)");
    }
    let tracer = root.join("target/release/tracer");
    let loadgen = root.join("target/release/loadgen");
    let bpftrace = !args.no_bpftrace
        && Command::new("sh")
            .args(["-c", "command -v bpftrace"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let mut configs = if let Some(other) = &args.compare {
        if !other.is_file() {
            bail!("--compare {}: no such file", other.display());
        }
        vec![Config::Untraced, Config::Serve, Config::ServeCompare]
    } else {
        vec![
            Config::Untraced,
            Config::Serve,
            Config::ServeNoHealth,
            Config::WatchJson,
            Config::WatchHuman,
            Config::ServeSyscalls,
            Config::WatchJsonSyscalls,
            Config::FloorSockets,
            Config::FloorSyscalls,
        ]
    };
    if bpftrace && args.compare.is_none() {
        configs.push(Config::Bpftrace);
    } else {
        eprintln!("bench: bpftrace is not installed: its row is left out");
    }
    // The agents' output files, in a private directory (mode 0700, a random name): a fixed
    // name in the shared /tmp would let any local user plant a symlink for root to write
    // through.
    let private = tempfile::Builder::new().prefix("tracer-bench-").tempdir()?;
    let dir = private.path().to_path_buf();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for round in 0..args.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..configs.len()).collect()
        } else {
            (0..configs.len()).rev().collect()
        };
        for i in order {
            let config = configs[i];
            let agent = start_agent(config, &tracer, args.compare.as_deref(), &dir)?;
            let started = Instant::now();
            let (ops, ops_unpaced) = load(&loadgen, args)?;
            let seconds = started.elapsed().as_secs_f64();
            let paced = if args.paced > 0 && args.mode != "long" {
                paced(&loadgen, args, agent.as_ref().map(|a| a.child.id()))?
            } else {
                Paced::default()
            };
            let cpu_us_per_op = paced.cpu_us_per_op;
            // The agent's events and CPU cover both phases (and the pause between them).
            let paced_seconds = if cpu_us_per_op > 0.0 {
                args.paced_seconds + 0.5
            } else {
                0.0
            };
            let mut run = Run {
                ops_per_sec: ops,
                seconds: seconds + paced_seconds,
                cpu_us_per_op,
                ..Default::default()
            };
            if let Some(agent) = agent {
                stop_agent(config, agent, &mut run)?;
                let paced_events = run.events as f64 * paced.ops / (ops_unpaced + paced.ops);
                if paced_events >= 1.0 {
                    run.agent_ms_per_1000_paced = paced.agent_cpu / paced_events * 1e6;
                }
            }
            eprintln!(
                "bench: round {} {:<40} {:>10.0} ops/s  {:>6.1} µs CPU/op paced  events {:>9}  lost {}",
                round + 1,
                config.name(),
                run.ops_per_sec,
                run.cpu_us_per_op,
                run.events,
                run.lost
            );
            runs[i].push(run);
        }
    }
    drop(private);

    let runs_untraced = runs[0].clone();
    let mut rows = Vec::new();
    let mut table = String::new();
    let mut serve_note = String::new();
    table.push_str(&format!("| configuration | median ops/s | min–max | ratio to untraced (median of rounds) | CPU per op at {} ops/s, loadgen + agent (median) | events/s handled | events lost | agent CPU per 1,000 events | same, paced (median) | agent peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n", args.paced));
    for (config, runs) in configs.iter().zip(&runs) {
        let mut rates: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let med = median(&mut rates);
        let events: u64 = runs.iter().map(|r| r.events).sum();
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let cpu: f64 = runs.iter().map(|r| r.cpu_seconds).sum();
        let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        if config.is_serve() && events > 0 {
            let records: u64 = runs.iter().map(|r| r.records).sum();
            // Per record only where there are enough records for it to mean something.
            let per_record = if records >= 100_000 {
                format!(
                    ", {:.2} ms of agent CPU per 1,000 records",
                    cpu / records as f64 * 1e6
                )
            } else {
                String::new()
            };
            serve_note += &format!(
                "\n`{}` counts events in the kernel and decodes records only for what its socket table needs: {records} records for {events} events ({:.1} %){per_record}.\n",
                config.name(),
                records as f64 * 100.0 / events as f64,
            );
        }
        let traced = *config != Config::Untraced;
        // Each run against the untraced run of its own round (the host's speed drifts, and
        // sometimes jumps, between rounds), then the median of those.
        let mut ratios: Vec<f64> = runs
            .iter()
            .zip(&runs_untraced)
            .map(|(r, u)| r.ops_per_sec / u.ops_per_sec)
            .collect();
        let ratio = median(&mut ratios);
        let mut cpu_per_op: Vec<f64> = runs.iter().map(|r| r.cpu_us_per_op).collect();
        let cpu_per_op = median(&mut cpu_per_op);
        let mut paced_1000: Vec<f64> = runs.iter().map(|r| r.agent_ms_per_1000_paced).collect();
        let paced_1000 = median(&mut paced_1000);
        let per_1000 = if events > 0 {
            cpu / events as f64 * 1000.0 * 1000.0
        } else {
            0.0
        };
        table.push_str(&format!(
            "| {} | {:.0} | {:.0}–{:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            config.name(),
            med,
            min,
            max,
            if traced {
                format!("{ratio:.2}")
            } else {
                "1.00".into()
            },
            if cpu_per_op > 0.0 {
                format!("{cpu_per_op:.1} µs")
            } else {
                "-".into()
            },
            if traced {
                format!("{:.0}", events as f64 / seconds)
            } else {
                "-".into()
            },
            if traced { lost.to_string() } else { "-".into() },
            if traced && events > 0 {
                format!("{per_1000:.2} ms")
            } else {
                "-".into()
            },
            if paced_1000 > 0.0 {
                format!("{paced_1000:.2} ms")
            } else {
                "-".into()
            },
            if traced {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            } else {
                "-".into()
            },
        ));
        rows.push(json!({
            "configuration": config.name(),
            "median_ops_per_sec": med,
            "min_ops_per_sec": min,
            "max_ops_per_sec": max,
            "ratio": ratio,
            "ratios_per_round": ratios,
            "cpu_us_per_op_paced": cpu_per_op,
            "runs": runs.iter().map(|r| r.ops_per_sec).collect::<Vec<_>>(),
            "events": events,
            "events_per_sec": if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
            "lost": lost,
            "agent_cpu_ms_per_1000_events": per_1000,
            "agent_cpu_ms_per_1000_events_paced": paced_1000,
            "agent_peak_rss_kib": rss,
        }));
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let when = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let machine = format!(
        "{} CPUs, Linux {}, {} mode, {} client thread(s), {} × {} s runs per configuration, interleaved",
        cpus,
        kernel.trim(),
        args.mode,
        args.threads,
        args.rounds,
        args.seconds
    );
    let compared = match &args.compare {
        Some(other) => format!("\nThe --compare binary: {}.\n", other.display()),
        None => String::new(),
    };
    let markdown = format!("{machine} ({when})\n\n{table}{serve_note}{compared}");
    println!("\n{markdown}");
    let results = root.join("bench/results");
    fs::create_dir_all(&results)?;
    let stem = format!(
        "{when}-{}-{}t{}",
        args.mode,
        args.threads,
        if args.compare.is_some() { "-ab" } else { "" }
    );
    fs::write(results.join(format!("{stem}.md")), &markdown)?;
    fs::write(
        results.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json!({
            "when": when,
            "host": host.trim(),
            "machine": machine,
            "mode": args.mode,
            "threads": args.threads,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "compare": args.compare,
            "results": rows,
        }))?,
    )?;
    eprintln!("bench: results in {}", results.join(&stem).display());
    Ok(())
}
