//! `cargo xtask`: set up a fresh machine, build, run as root, lint, and test.
//!
//! Every step is idempotent: a second `setup` finds everything in place and does nothing.
//! Building and running tracer need only the eBPF toolchain (`setup run`); the Debian packages
//! the end-to-end tests drive come with `setup` / `setup test`, which `test` runs.
use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod bench_nat;
mod direction;

#[derive(Parser)]
#[command(name = "xtask", about = "Development tasks for tracer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: for `run`, rust-src for nightly and bpf-linker; for
    /// `test` (the default), also the Debian packages the tests use.
    Setup {
        /// What to make this machine ready for.
        #[arg(value_enum, default_value_t = Level::Test)]
        level: Level,
    },
    /// Set up for running, then build the release binary (target/release/tracer).
    Build,
    /// Set up for running, build, and run tracer as root: `cargo xtask run -- watch`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy (-D warnings) on user space, and clippy on the eBPF crate on its own.
    Lint,
    /// Benchmark: the loopback load untraced and with tracer attached, interleaved; prints
    /// ratios and writes bench/results/ (run as root).
    Bench(bench::BenchArgs),
    /// The test router for NAT (scripts/nat-router.sh, as root): `cargo xtask router up
    /// [masquerade|pool4|pool4-legacy|snat|dnat|all]` makes namespaces trlan, trrouter, trwan; `router down`
    /// removes them. Then: `sudo tracer nat --netns trrouter`.
    Router {
        /// up or down
        #[arg(value_parser = ["up", "down"])]
        action: String,
        /// NAT rules for `up`.
        #[arg(default_value = "all", value_parser = ["masquerade", "pool4", "pool4-legacy", "snat", "dnat", "all"])]
        mode: String,
    },
    /// Everything CI runs: setup (everything the tests use), build, lint, unit tests, and the
    /// end-to-end tests as root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `setup` makes a machine ready for.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    /// Building and running tracer: rust-src for nightly, bpf-linker (no Debian packages).
    Run,
    /// Also the tests: the Debian packages they use (nginx, chromium, prometheus, tmux, …).
    Test,
}

/// Debian packages tracer needs at run time: none. It calls no external program (only `trace`
/// runs the user's own command); tracefs, namespaces and conntrack go through syscalls/netlink.
const RUN_PACKAGES: &[&str] = &[];

/// Debian packages the tests use (servers, clients and tools they drive).
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "procps",
    "curl",
    "tmux",
    "chromium",
    "python3",
    "prometheus",
    "nftables",
    // iptables-legacy: NAT rules made the other way, for the pool-size test.
    "iptables",
    "conntrack",
    // A real pre-forking server (master + workers), for the live view's attribution test.
    "nginx",
    // A real container runtime and an image made from a static busybox (tests/containers.rs
    // starts and stops dockerd itself; nothing is pulled).
    "docker.io",
    "busybox-static",
    // containerd with its CRI plugin (and ctr): a pod run the way the kubelet runs one, for
    // the CRI names (docker.io depends on it; named here because the test drives it).
    "containerd",
];

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup { level } => setup(level),
        Task::Bench(args) => {
            // tracer and loadgen; bpftrace is optional (the benchmark skips it when absent).
            setup(Level::Run)?;
            build()?;
            let mut loadgen = cmd("cargo");
            loadgen.args([
                "build",
                "--release",
                "-p",
                "tracer-tests",
                "--bin",
                "loadgen",
            ]);
            status(loadgen)?;
            bench::bench(&root(), &args)
        }
        Task::Build => {
            setup(Level::Run)?;
            build()
        }
        Task::Router { action, mode } => {
            let mut router = cmd(root().join("scripts/nat-router.sh"));
            router.args([action.as_str(), "tr", mode.as_str()]);
            status(router)
        }
        Task::Run { args } => {
            setup(Level::Run)?;
            build()?;
            let bin = root().join("target/release/tracer");
            as_root(&bin, &args)
        }
        Task::Lint => {
            // Clippy builds the crate, and with it the eBPF programs: the toolchain is needed.
            setup(Level::Run)?;
            lint()
        }
        Task::Test { args } => {
            // A fresh machine (CI runs exactly this) gets everything the tests use.
            setup(Level::Test)?;
            build()?;
            lint()?;
            test(&args)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.current_dir(root());
    c
}

fn status(mut c: Command) -> Result<()> {
    let shown = format!("{c:?}");
    let st = c.status().with_context(|| format!("running {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

fn output(mut c: Command) -> Result<String> {
    let shown = format!("{c:?}");
    let out = c.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run as root: directly when we are root, else through sudo.
fn root_cmd(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        cmd(program)
    } else {
        let mut c = cmd("sudo");
        c.arg("--preserve-env=CI,PATH,CARGO_HOME,RUSTUP_HOME,TRACER_BIN");
        c.arg(program);
        c
    }
}

fn as_root(bin: &Path, args: &[String]) -> Result<()> {
    let mut c = root_cmd(bin);
    c.args(args);
    status(c)
}

fn setup(level: Level) -> Result<()> {
    let mut packages = RUN_PACKAGES.to_vec();
    if level == Level::Test {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    debian_packages(&packages)?;
    rust_src()?;
    bpf_linker()
}

fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let mut c = cmd("dpkg-query");
            c.args(["-W", "-f=${Status}", p]);
            !output(c).is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let mut update = root_cmd("apt-get");
    update.args(["update", "-qq"]);
    status(update)?;
    let mut install = root_cmd("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing);
    status(install)
}

fn rust_src() -> Result<()> {
    let mut list = cmd("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let installed = output(list)
        .context("the nightly toolchain is needed for the eBPF programs; install it with rustup")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    let mut add = cmd("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    status(add)
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// bpf-linker, built against the nightly toolchain's own libLLVM (prebuilt downloads are not
/// reachable here). The prefix folder stays under CARGO_HOME: the binary's rpath points at it.
fn bpf_linker() -> Result<()> {
    let mut version = cmd("bpf-linker");
    version.arg("--version");
    if output(version).is_ok() {
        return Ok(());
    }
    let mut sysroot = cmd("rustc");
    sysroot.args(["+nightly", "--print", "sysroot"]);
    let sysroot = PathBuf::from(output(sysroot)?.trim());
    let lib_dir = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {llvm}"))?
        .to_string();
    let prefix = cargo_home().join(format!("bpf-linker-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker against the nightly toolchain's LLVM {major}");
    let mut install = cmd("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", "0.13.0", "--locked"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"));
    status(install)
}

fn build() -> Result<()> {
    let mut c = cmd("cargo");
    c.args(["build", "--release", "-p", "tracer", "-p", "tracer-tests"]);
    status(c)
}

fn lint() -> Result<()> {
    direction::check(&root().join("tracer/src"))?;
    let mut fmt = cmd("cargo");
    fmt.args(["fmt", "--all", "--check"]);
    status(fmt)?;
    let mut clippy = cmd("cargo");
    clippy.args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(clippy)?;
    // The eBPF crate on its own, for its real target.
    let mut ebpf = cmd("cargo");
    ebpf.current_dir(root().join("tracer-ebpf")).args([
        "+nightly",
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]);
    status(ebpf)
}

fn test(args: &[String]) -> Result<()> {
    // Unit tests need no root.
    let mut unit = cmd("cargo");
    unit.args(["test", "--release", "-p", "tracer", "-p", "tracer-common"]);
    status(unit)?;
    // End-to-end tests load eBPF programs: run the already built test binary as root.
    let mut list = cmd("cargo");
    list.args([
        "test",
        "--release",
        "-p",
        "tracer-tests",
        "--no-run",
        "--message-format=json",
    ]);
    let messages = output(list)?;
    let executables: Vec<String> = messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| m["executable"].as_str().map(str::to_string))
        .collect();
    if executables.is_empty() {
        bail!("no end-to-end test binaries were built");
    }
    // The containers suite starts a Docker daemon (and its iptables chains): after every
    // other suite, so none of them runs beside it.
    let mut executables = executables;
    executables.sort_by_key(|exe| {
        std::path::Path::new(exe)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("containers-"))
    });
    let tracer = root().join("target/release/tracer");
    for exe in executables {
        let mut c = root_cmd(&exe);
        // One test at a time, so each test's kernel-side load is its own. (Parallel runs are
        // where a stale socket-table entry at a reused `struct sock *` address showed up as a
        // handshake attributed to another test's process; fixed in the table, and six
        // parallel runs of tests/watch.rs in a row are green since.)
        c.env("TRACER_BIN", &tracer)
            .arg("--test-threads=1")
            .args(args);
        status(c)?;
    }
    Ok(())
}
