//! Which cgroup hierarchy names a record's cgroup id. With cgroup v2 mounted (unified or
//! hybrid), `bpf_get_current_cgroup_id()` is the inode of the caller's directory there. On a
//! host without cgroup v2 every task sits in the (unmounted) default hierarchy's root, so that
//! id names nothing: the programs read the caller's cgroup in one v1 controller's hierarchy
//! instead (`task->cgroups->subsys[ID]->cgroup->kn->id`, offsets from BTF), and its path comes
//! from that controller's mount and the `ID:controller:/path` line of `/proc/PID/cgroup`.
//!
//! `TRACER_CGROUP_V1=CONTROLLER` chooses the v1 way on a hybrid host too: for a runtime that
//! puts its containers in the v1 controllers only (an old runc on a hybrid systemd host leaves
//! them in their shim's v2 cgroup, where they would look like the host).
use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

static V1_UNREADABLE: AtomicBool = AtomicBool::new(false);

/// The v1 controllers tried, in order, when no cgroup v2 is mounted (runtimes make a cgroup
/// for each container in every one of them).
const V1_CONTROLLERS: [&str; 6] = ["pids", "memory", "cpu", "cpuacct", "devices", "freezer"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2, mounted here.
    Unified(PathBuf),
    /// A v1 controller's hierarchy, mounted here.
    V1 { root: PathBuf, controller: String },
}

impl Hierarchy {
    /// The hierarchy records' cgroup ids name (found once per run; none once the programs
    /// could not read a v1 one).
    pub fn get() -> Option<&'static Hierarchy> {
        static FOUND: OnceLock<Option<Hierarchy>> = OnceLock::new();
        let found = FOUND.get_or_init(find).as_ref()?;
        if found.controller().is_some() && V1_UNREADABLE.load(Ordering::Relaxed) {
            return None;
        }
        Some(found)
    }

    /// The programs cannot read the caller's v1 cgroup on this kernel (its BTF lacks what the
    /// walk needs): containers are not named, rather than every one taken for the host.
    pub fn v1_unreadable() {
        V1_UNREADABLE.store(true, Ordering::Relaxed);
    }

    pub fn root(&self) -> &PathBuf {
        match self {
            Hierarchy::Unified(root) | Hierarchy::V1 { root, .. } => root,
        }
    }

    /// The v1 controller whose cgroup the programs read (None: cgroup v2's id).
    pub fn controller(&self) -> Option<&str> {
        match self {
            Hierarchy::Unified(_) => None,
            Hierarchy::V1 { controller, .. } => Some(controller),
        }
    }

    /// A process's cgroup path in this hierarchy, from its `/proc/PID/cgroup` text.
    pub fn path_in<'a>(&self, proc_cgroup: &'a str) -> Option<&'a str> {
        match self {
            Hierarchy::Unified(_) => crate::model::container::unified_path(proc_cgroup),
            Hierarchy::V1 { controller, .. } => {
                crate::model::container::controller_path(proc_cgroup, controller)
            }
        }
    }

    /// The id of cgroup `path` (its directory's inode), as the records carry it.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let relative = path.trim_start_matches('/');
        std::fs::metadata(self.root().join(relative))
            .ok()
            .map(|m| m.ino())
    }
}

fn find() -> Option<Hierarchy> {
    let mounts = super::mountinfo::mounts().ok()?;
    let v1 = |controller: &str| {
        mounts
            .iter()
            .find(|m| {
                m.fs_type == b"cgroup"
                    && m.super_options
                        .split(|&b| b == b',')
                        .any(|o| o == controller.as_bytes())
            })
            .map(|m| Hierarchy::V1 {
                root: m.mount_point.clone(),
                controller: controller.to_string(),
            })
    };
    if let Ok(controller) = std::env::var("TRACER_CGROUP_V1") {
        let found = v1(&controller);
        if found.is_none() {
            tracing::warn!(
                "TRACER_CGROUP_V1={}: no such cgroup v1 controller mounted",
                crate::text::escape(&controller)
            );
        }
        return found;
    }
    if let Some(m) = mounts.iter().find(|m| m.fs_type == b"cgroup2") {
        return Some(Hierarchy::Unified(m.mount_point.clone()));
    }
    let found = V1_CONTROLLERS.iter().find_map(|c| v1(c));
    if let Some(Hierarchy::V1 { controller, .. }) = &found {
        tracing::info!(
            "no cgroup v2 mounted: containers found through the cgroup v1 {controller} hierarchy"
        );
    }
    found
}
