//! The load generator's two phases of a run: unpaced (throughput), then paced (CPU per
//! operation at a fixed rate, and the agent's share of it).
use std::{
    fs,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::BenchArgs;

/// One unpaced run: (operations/s, operations).
pub(super) fn load(loadgen: &Path, args: &BenchArgs) -> Result<(f64, f64)> {
    let mut c = Command::new(loadgen);
    c.args([
        args.mode.as_str(),
        &args.threads.to_string(),
        &args.seconds.to_string(),
    ]);
    let out = c.output().context("running loadgen")?;
    if !out.status.success() {
        bail!("loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("loadgen output")?;
    let rate = v["ops_per_sec"].as_f64().context("ops_per_sec")?;
    Ok((rate, v["ops"].as_f64().unwrap_or(0.0)))
}

/// The paced phase: `rate` operations per second for `seconds`. Returns the CPU µs per
/// operation of the load generator (its calls, and the kernel work and programs they run) and
/// the agent together. (The whole machine's /proc/stat counters were tried first: on this VM
/// they are tick-sampled and lumpy, 1 to 70 µs for the same untraced run.)
pub(super) fn paced(loadgen: &Path, args: &BenchArgs, agent: Option<u32>) -> Result<Paced> {
    // The agent finishes what the unpaced run left in the ring first.
    std::thread::sleep(Duration::from_millis(500));
    let agent_before = agent.map_or(0, cpu_ns_of);
    let child = Command::new(loadgen)
        .args([
            args.mode.as_str(),
            &args.threads.to_string(),
            &args.paced_seconds.to_string(),
            &args.paced.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running loadgen (paced)")?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.context("loadgen stdout")?;
    let mut text = String::new();
    stdout.read_to_string(&mut text)?;
    let mut status = 0;
    // SAFETY: plain-data out-parameters that live across the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid || status != 0 {
        bail!("loadgen (paced) failed: status {status}");
    }
    let agent_cpu = agent.map_or(0, cpu_ns_of).saturating_sub(agent_before) as f64 / 1e9;
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let loadgen_cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    let v: Value = serde_json::from_str(&text).context("loadgen output")?;
    let ops = v["ops"].as_f64().context("ops")?;
    Ok(Paced {
        cpu_us_per_op: (loadgen_cpu + agent_cpu) * 1e6 / ops.max(1.0),
        agent_cpu,
        ops,
    })
}

/// What the paced phase measured.
#[derive(Default)]
pub(super) struct Paced {
    pub cpu_us_per_op: f64,
    /// The agent's CPU seconds in the phase.
    pub agent_cpu: f64,
    pub ops: f64,
}

/// On-CPU nanoseconds of every thread of `pid` (`/proc/PID/task/*/schedstat`: exact, where
/// `/proc/PID/stat`'s ticks are 10 ms apart).
fn cpu_ns_of(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
