//! Everything that touches the kernel: prerequisite checks and mounts, BTF offsets, tracepoint
//! formats, loading and attaching, network namespaces.
pub mod attach;
pub mod btf;
pub mod cgroups;
pub mod conntrack;
pub mod containers;
pub mod cri;
pub mod docker;
pub mod evictions;
pub mod live_netns;
pub mod loader;
pub mod mountinfo;
pub mod nat;
pub mod nat_watch;
pub mod netns;
pub mod prereq;
pub mod snapshot;
pub mod tracefs;
