//! Builds the eBPF objects (tracer-ebpf) with aya-build and embeds them in the binary.
//!
//! When the build is skipped (`AYA_BUILD_SKIP=1`, or no bpf-linker on PATH) empty stub objects
//! are written instead, so `cargo check` and `cargo clippy` work on machines without the eBPF
//! toolchain; such a binary refuses to run `watch` and says why.
use std::{env, fs, path::PathBuf};

const OBJECTS: &[&str] = &["tracer-sock", "tracer-nat"];

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
    let ebpf_dir = manifest_dir.join("../tracer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
