//! Builds the eBPF objects (tracer-ebpf) and embeds them in the binary.
//!
//! The nested cargo build is the one aya-build 0.2 runs (nightly, `-Z build-std=core`, BTF),
//! but with its output captured: aya-build forwards every line of it as a `cargo:warning`, so
//! every build of tracer printed dozens of `warning: tracer@0.1.0: Compiling …` lines. Here a
//! clean build prints nothing; compiler warnings still show as `cargo:warning`s, and a failed
//! build shows the compiler's errors.
//!
//! When the build is skipped (`AYA_BUILD_SKIP=1`, or no bpf-linker on PATH) empty stub objects
//! are written instead, so `cargo check` and `cargo clippy` work on machines without the eBPF
//! toolchain; such a binary refuses to run `watch` and says why.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// The eBPF crate's binaries, each copied to `OUT_DIR/<name>`.
const OBJECTS: &[&str] = &["tracer-sock", "tracer-nat"];
const EBPF_PACKAGE: &str = "tracer-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rustc-check-cfg=cfg(tracer_ebpf_stub)");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker = which_bpf_linker();
    // Rebuild when bpf-linker appears or changes. While it is missing, point at where
    // `cargo xtask setup` installs it: a path that does not exist makes cargo rerun us, so a
    // stub build never outlives the linker's installation.
    let watched = linker.clone().unwrap_or_else(|| {
        let cargo_home = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo")
            });
        cargo_home.join("bin/bpf-linker")
    });
    println!("cargo:rerun-if-changed={}", watched.display());
    let have_linker = linker.is_some();
    if skip || !have_linker {
        println!(
            "cargo:warning=building tracer without eBPF objects ({}); run `cargo xtask setup` for a working binary",
            if skip { "AYA_BUILD_SKIP is set" } else { "bpf-linker not found" }
        );
        for name in OBJECTS {
            fs::write(out_dir.join(name), [])?;
        }
        println!("cargo:rustc-cfg=tracer_ebpf_stub");
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let workspace = manifest_dir.parent().expect("workspace root");
    // Directories, so any file added to or changed in them reruns the build (cargo walks them).
    // tracer-common too: the eBPF programs are built from it, and nothing else would tell cargo.
    for dir in [EBPF_PACKAGE, "tracer-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    build_ebpf(&out_dir)
}

/// Runs the nested eBPF build with its output captured, then copies the objects to `out_dir`.
fn build_ebpf(out_dir: &Path) -> anyhow::Result<()> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    // Separate from OUT_DIR's objects, and the same place aya-build used (no rebuild on switch).
    let target_dir = out_dir.join("aya-build/target").join(EBPF_PACKAGE);
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        EBPF_PACKAGE,
    ])
    .args([
        "--bins",
        "--release",
        "--target",
        target,
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags(&arch))
    // Set by the outer (stable) cargo; they would pin the nested build to the wrong rustc.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    let diagnostics = diagnostics(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // A failing build script's stderr is shown by cargo in full, lines intact. Exit rather
        // than return an error: the error's backtrace would bury the compiler's message.
        eprintln!("{diagnostics}");
        eprintln!(
            "building the eBPF programs (tracer-ebpf) failed: {}",
            out.status
        );
        std::process::exit(1);
    }
    for line in diagnostics.lines() {
        println!("cargo:warning={line}");
    }
    for name in OBJECTS {
        let built = target_dir.join(target).join("release").join(name);
        fs::copy(&built, out_dir.join(name))
            .with_context(|| format!("copying {} to OUT_DIR", built.display()))?;
    }
    Ok(())
}

/// The flags aya-build passes: the target arch as a cfg (aya-ebpf reads it), BTF for aya.
fn rustflags(arch: &str) -> OsString {
    // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ];
    flags.join("\x1f").into()
}

/// The nested cargo's stderr without its progress lines (`   Compiling …`, `    Finished …`):
/// what is left is the compiler's warnings and errors, or nothing.
fn diagnostics(stderr: &str) -> String {
    const PROGRESS: &[&str] = &[
        "Adding",
        "Blocking",
        "Building",
        "Checking",
        "Compiling",
        "Downloaded",
        "Downloading",
        "Finished",
        "Fresh",
        "Locking",
        "Updating",
    ];
    stderr
        .lines()
        .filter(|line| {
            let word = line.trim_start().split(' ').next().unwrap_or("");
            !(line.starts_with(' ') && PROGRESS.contains(&word))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn which_bpf_linker() -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
