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

pub fn run() -> Result<()> {
    prereq::require_root("doctor")?;
    let mounted_now = prereq::ensure_tracefs()?;
    let mut checks = Vec::new();
    let mut add = |name: &str, available: bool, used: bool, note: String| {
        checks.push(Check {
            name: name.to_string(),
            available,
            used,
            note,
        })
    };
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

    let probe = |t: ProgramType| aya::sys::is_program_supported(t).unwrap_or(false);
    add(
        "tracepoint programs",
        probe(ProgramType::TracePoint),
        true,
        "socket syscalls".into(),
    );
    add(
        "raw tracepoint programs",
        probe(ProgramType::RawTracePoint),
        true,
        "TCP states".into(),
    );
    add(
        "kprobe programs",
        std::path::Path::new(tracefs::TRACEFS)
            .join("kprobe_events")
            .exists(),
        false,
        "not needed: tracer uses stable tracepoints".into(),
    );
    add(
        "fentry/fexit (tracing) programs",
        probe(ProgramType::Tracing),
        false,
        "optional; not needed".into(),
    );
    add(
        "cgroup sock programs",
        probe(ProgramType::CgroupSock),
        true,
        "sock_release: when a socket is freed".into(),
    );
    add(
        "sock_ops programs",
        probe(ProgramType::SockOps),
        false,
        String::new(),
    );
    add(
        "netfilter programs",
        probe(ProgramType::Netfilter),
        false,
        "for NAT tracing".into(),
    );

    let btf_ok = btf::KernelBtf::load();
    let offsets = btf_ok.as_ref().ok().map(loader::resolve_offsets);
    add(
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        btf_ok.is_ok(),
        true,
        match &offsets {
            Some(Ok(_)) => "all socket field offsets resolved".into(),
            Some(Err(e)) => e.to_string(),
            None => "missing".into(),
        },
    );
    match prereq::cgroup2_root() {
        Ok(path) => add("cgroup v2", true, true, path.display().to_string()),
        Err(e) => add("cgroup v2", false, true, e.to_string()),
    }
    for (category, event) in [
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
    ] {
        // The data tracepoints (Linux 6.3+) serve `tracer trace` only; without them the rest
        // of tracer runs.
        let note = if event.ends_with("_length") {
            "tracer trace: bytes per socket (optional)"
        } else {
            ""
        };
        // The TCP state machine is read through a raw tracepoint (no record built).
        let kind = if event == "inet_sock_set_state" {
            "raw tracepoint"
        } else {
            "tracepoint"
        };
        add(
            &format!("{kind} {category}:{event}"),
            tracefs::exists(category, event),
            true,
            note.to_string(),
        );
    }

    writeln!(out, "{:<44} {:<10} {:<5} NOTE", "HOOK", "AVAILABLE", "USED").map_err(io_err)?;
    let mut missing_needed = 0;
    for c in &checks {
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
        )
        .map_err(io_err)?;
    }
    if missing_needed == 0 && matches!(offsets, Some(Ok(_))) {
        writeln!(out, "\ntracer watch can run on this kernel.").map_err(io_err)?;
        Ok(())
    } else {
        Err(crate::error::Error::Invalid(format!(
            "{missing_needed} hook(s) tracer needs are missing on this kernel (see above)"
        )))
    }
}
