//! Per-program run counts and run time (`bpf_stats`) of the programs an agent holds: the
//! per-packet cost of the netfilter programs, and of whatever else the agent loaded.
use std::{collections::BTreeMap, fs, os::fd::FromRawFd, os::fd::OwnedFd, process::Command};

use serde_json::Value;

/// `kernel.bpf_stats_enabled` while this lives. `BPF_ENABLE_STATS` gives a file descriptor
/// that keeps the statistics on until it is closed, by us or by the kernel when the process
/// dies, so even a killed benchmark leaves nothing switched on. Kernels without it: the sysctl,
/// set back to its old value on drop.
pub enum StatsOn {
    Fd(#[allow(dead_code)] OwnedFd),
    Sysctl(String),
    Off,
}

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsOn {
    pub fn enable() -> StatsOn {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; … }, BPF_STATS_RUN_TIME = 0.
        let attr = [0u32; 4];
        // SAFETY: `attr` outlives the call and is as large as the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return StatsOn::Fd(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let old = fs::read_to_string(SYSCTL).unwrap_or_default();
        match fs::write(SYSCTL, "1") {
            Ok(()) => StatsOn::Sysctl(old.trim().to_string()),
            Err(e) => {
                eprintln!("bench: cannot enable bpf_stats ({e}): no per-program run times");
                StatsOn::Off
            }
        }
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let StatsOn::Sysctl(old) = self {
            if let Err(e) = fs::write(SYSCTL, old.as_bytes()) {
                eprintln!("bench: could not restore kernel.bpf_stats_enabled={old}: {e}");
            }
        }
    }
}

/// One program's statistics, keyed by type and name (programs with both are summed: the
/// same program loaded for IPv4 and IPv6, say).
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub programs: u64,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

pub type Stats = BTreeMap<(String, String), ProgStats>;

/// The ids of the BPF programs a process holds, from the `prog_id` lines of its fds' fdinfo
/// (program and link fds both name one; as tests/src/lib.rs does it).
fn programs_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        for id in info.lines().filter_map(|l| l.strip_prefix("prog_id:")) {
            if let Ok(id) = id.trim().parse::<u64>() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// Run counts and times of `pid`'s programs now (bpftool; empty when it is missing).
pub fn of_agent(pid: u32) -> Stats {
    let ids = programs_of(pid);
    let mut stats = Stats::new();
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return stats;
    };
    let all: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for p in all.as_array().into_iter().flatten() {
        if !ids.contains(&p["id"].as_u64().unwrap_or(0)) {
            continue;
        }
        // bpftool 7.1 predates BPF_PROG_TYPE_NETFILTER and prints its number.
        let kind = match &p["type"] {
            Value::String(t) => t.clone(),
            Value::Number(n) if n.as_u64() == Some(32) => "netfilter".into(),
            other => format!("type {other}"),
        };
        let key = (kind, p["name"].as_str().unwrap_or("?").to_string());
        let s = stats.entry(key).or_default();
        s.programs += 1;
        s.run_cnt += p["run_cnt"].as_u64().unwrap_or(0);
        s.run_time_ns += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    stats
}

/// Adds one run's statistics to a configuration's total.
pub fn add(total: &mut Stats, run: &Stats) {
    for (key, s) in run {
        let t = total.entry(key.clone()).or_default();
        t.programs = t.programs.max(s.programs);
        t.run_cnt += s.run_cnt;
        t.run_time_ns += s.run_time_ns;
    }
}
