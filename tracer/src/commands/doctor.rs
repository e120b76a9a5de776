//! `tracer doctor`: what this kernel offers (hook types, tracepoints, BTF, cgroup v2, tracefs)
//! and which of those tracer uses. Probes by loading tiny programs, so it needs root.
use std::io::Write;

use aya::programs::ProgramType;

use crate::{
    error::{Error, Result},
    kernel::{btf, loader, prereq, tracefs},
};

struct Check {
    name: String,
    available: bool,
    used: bool,
    note: String,
}

impl Check {
    fn new(name: &str, available: bool, used: bool, note: impl Into<String>) -> Self {
        Check {
            name: name.to_string(),
            available,
            used,
            note: note.into(),
        }
    }
}

pub fn run() -> Result<()> {
    prereq::require_root("doctor")?;
    let mounted_now = prereq::ensure_tracefs()?;
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    // Written, not println!-ed: a closed stdout (`doctor | head`) is an error main handles,
    // not a panic.
    let mut out = std::io::stdout().lock();
    let io_err = |e| Error::io("writing output", e);
    writeln!(out, "kernel {kernel}").map_err(io_err)?;
    if mounted_now {
        writeln!(out, "mounted tracefs at {}", tracefs::TRACEFS).map_err(io_err)?;
    }
    let mut checks = program_types();
    let offsets_resolved = kernel_facts(&mut checks);
    checks.extend(tracepoints());
    let missing_needed = print(&mut out, &checks).map_err(io_err)?;
    if missing_needed == 0 && offsets_resolved {
        writeln!(
            out,
            "\ntracer watch can run on this kernel: watch and serve take the socket path \
             (socket hooks), --syscalls and trace the syscall path (syscall tracepoints)."
        )
        .map_err(io_err)?;
        Ok(())
    } else {
        Err(crate::error::Error::Invalid(format!(
            "{missing_needed} hook(s) tracer needs are missing on this kernel (see above)"
        )))
    }
}

/// The program types this kernel loads (each probed by loading a tiny program).
fn program_types() -> Vec<Check> {
    let probe = |t: ProgramType| aya::sys::is_program_supported(t).unwrap_or(false);
    let kprobes = std::path::Path::new(tracefs::TRACEFS)
        .join("kprobe_events")
        .exists();
    vec![
        Check::new(
            "tracepoint programs",
            probe(ProgramType::TracePoint),
            true,
            "syscall path: watch --syscalls, trace, ports --live, nat flows",
        ),
        Check::new(
            "raw tracepoint programs",
            probe(ProgramType::RawTracePoint),
            true,
            "TCP states",
        ),
        Check::new(
            "kprobe programs",
            kprobes,
            false,
            "not needed: tracer uses stable tracepoints",
        ),
        Check::new(
            "fentry/fexit (tracing) programs",
            probe(ProgramType::Tracing),
            false,
            "optional; not needed",
        ),
        Check::new(
            "cgroup sock programs",
            probe(ProgramType::CgroupSock),
            true,
            "socket made, bound, released (release: both paths)",
        ),
        Check::new(
            "cgroup sock_addr programs",
            probe(ProgramType::CgroupSockAddr),
            true,
            "socket path: binds asked, UDP datagrams with an address",
        ),
        Check::new(
            "sock_ops programs",
            probe(ProgramType::SockOps),
            true,
            "socket path: connect (the kernel's port), listen, handshakes done",
        ),
        Check::new(
            "netfilter programs",
            probe(ProgramType::Netfilter),
            false,
            "for NAT tracing",
        ),
    ]
}

/// BTF (and the offsets tracer resolves from it) and cgroup v2. Returns whether every offset
/// resolved.
fn kernel_facts(checks: &mut Vec<Check>) -> bool {
    let btf_ok = btf::KernelBtf::load();
    let offsets = btf_ok.as_ref().ok().map(loader::resolve_offsets);
    let note = match &offsets {
        Some(Ok(_)) => "all socket field offsets resolved".into(),
        Some(Err(e)) => e.to_string(),
        None => "missing".into(),
    };
    checks.push(Check::new(
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        btf_ok.is_ok(),
        true,
        note,
    ));
    checks.push(match prereq::cgroup2_root() {
        Ok(path) => Check::new("cgroup v2", true, true, path.display().to_string()),
        Err(e) => Check::new("cgroup v2", false, true, e.to_string()),
    });
    matches!(offsets, Some(Ok(_)))
}

/// The tracepoints tracer attaches to.
fn tracepoints() -> Vec<Check> {
    const USED: &[(&str, &str)] = &[
        ("syscalls", "sys_enter_socket"),
        ("syscalls", "sys_enter_bind"),
        ("syscalls", "sys_enter_listen"),
        ("syscalls", "sys_enter_accept4"),
        ("syscalls", "sys_enter_connect"),
        ("syscalls", "sys_enter_close"),
        ("syscalls", "sys_enter_shutdown"),
        ("syscalls", "sys_enter_sendto"),
        ("syscalls", "sys_enter_recvfrom"),
        ("syscalls", "sys_enter_sendmsg"),
        ("syscalls", "sys_enter_recvmsg"),
        ("sock", "inet_sock_set_state"),
        ("sched", "sched_process_fork"),
        ("sched", "sched_process_free"),
        ("sock", "sock_send_length"),
        ("sock", "sock_recv_length"),
    ];
    let health = crate::kernel::attach::HEALTH_HOOKS;
    USED.iter()
        .chain(health)
        .map(|&(category, event)| {
            // The data tracepoints (Linux 6.3+) serve `tracer trace` only; without them the
            // rest of tracer runs.
            let is_health = health.contains(&(category, event));
            let note = if event.ends_with("_length") {
                "tracer trace: bytes per socket (optional)"
            } else if is_health {
                "retransmits, resets, drops (optional: shown when present)"
            } else {
                ""
            };
            // The TCP state machine and the health events are read through raw tracepoints
            // (no record built).
            let kind = if event == "inet_sock_set_state" || is_health {
                "raw tracepoint"
            } else {
                "tracepoint"
            };
            let name = format!("{kind} {category}:{event}");
            Check::new(&name, tracefs::exists(category, event), true, note)
        })
        .collect()
}

/// The table; returns how many needed hooks are missing.
fn print(out: &mut impl Write, checks: &[Check]) -> std::io::Result<usize> {
    writeln!(out, "{:<44} {:<10} {:<5} NOTE", "HOOK", "AVAILABLE", "USED")?;
    let mut missing_needed = 0;
    for c in checks {
        if c.used && !c.available && !c.note.ends_with("(optional)") {
            missing_needed += 1;
        }
        writeln!(
            out,
            "{:<44} {:<10} {:<5} {}",
            c.name,
            if c.available { "yes" } else { "no" },
            if c.used { "yes" } else { "-" },
            c.note
        )?;
    }
    Ok(missing_needed)
}
