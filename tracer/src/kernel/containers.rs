//! The live side of container identity: a cgroup id (the kernel's, in each record) → its path
//! in the unified hierarchy → [`model::container::from_path`], and the runtime's names for it
//! ([`super::docker`] for Docker, [`super::cri`] for a Kubernetes node's containerd or
//! CRI-O).
//!
//! A cgroup id is the inode of the cgroup's directory. The path is found through the process
//! that made the record first (`/proc/PID/cgroup`, checked against the id by `stat`), else by
//! walking the hierarchy (at most every [`WALK_EVERY`], at most [`MAX_WALK`] cgroups): a
//! process gone by the time its record is read still gets its container, as long as the
//! cgroup lives. An id found nowhere is not known (never a guess from a process that may have
//! moved or a pid reused). Without cgroup v2 the ids are a v1 controller's ([`super::cgroups`]).
//!
//! A container found on a path any directory of which a user other than root owns (a
//! subtree delegated to that user: `user@UID.service`, an LXC payload, a `Delegate=yes`
//! unit) is marked delegated: that user named it, and may have copied a real container's id.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use foldhash::HashMap;

use crate::model::container::{from_path, Container, Runtime};

use super::{cri::CriNames, docker::DockerNames};

/// The runtimes tracer asks for names: each on its own thread, each optional.
#[derive(Clone, Default)]
pub struct Runtimes {
    pub docker: Option<DockerNames>,
    pub cri: Option<CriNames>,
}

impl Runtimes {
    /// Starts asking every runtime whose socket is there (each says once if it is not).
    pub fn start() -> Self {
        Runtimes {
            docker: DockerNames::start(),
            cri: CriNames::start(),
        }
    }

    /// Waits (at most `timeout` each) for the runtimes' first lists: for a one-shot reading.
    pub fn wait_listed(&self, timeout: std::time::Duration) {
        if let Some(d) = &self.docker {
            d.wait_listed(timeout);
        }
        if let Some(c) = &self.cri {
            c.wait_listed(timeout);
        }
    }
}

/// Cgroups one walk of the hierarchy records at most (a node with more cgroups than this
/// finds the rest through their processes).
const MAX_WALK: usize = 16_384;
/// At most one walk this often (a user who makes and removes cgroups cannot make tracer walk
/// more often); the map is rebuilt by each walk.
const WALK_EVERY: Duration = Duration::from_secs(5);

pub struct ContainerResolver {
    /// The hierarchy the records' cgroup ids name (cgroup v2, or a v1 controller's).
    hierarchy: Option<super::cgroups::Hierarchy>,
    /// The root cgroup's id: the host.
    root_id: Option<u64>,
    /// id → path, from the last walk.
    walked: HashMap<u64, String>,
    last_walk: Option<Instant>,
    docker: Option<DockerNames>,
    cri: Option<CriNames>,
}

impl ContainerResolver {
    /// Finds the hierarchy and starts asking the runtimes for names, if their sockets answer.
    pub fn new() -> Self {
        Self::with_runtimes(Runtimes::start())
    }

    /// The same, with the runtimes' names from threads already started (or none).
    pub fn with_runtimes(runtimes: Runtimes) -> Self {
        let Runtimes { docker, cri } = runtimes;
        let hierarchy = super::cgroups::Hierarchy::get().cloned();
        if hierarchy.is_none() {
            tracing::info!("no cgroup hierarchy mounted: containers are not named");
        }
        let root_id = hierarchy
            .as_ref()
            .and_then(|h| fs::metadata(h.root()).ok())
            .map(|m| m.ino());
        ContainerResolver {
            hierarchy,
            root_id,
            walked: HashMap::default(),
            last_walk: None,
            docker,
            cri,
        }
    }

    /// The ports Docker publishes now, one per (container, binding), as far as its names
    /// thread knows them (never waited for: the stage asks again each second).
    pub fn published(&self) -> Vec<crate::model::mapping::Published> {
        self.docker
            .as_ref()
            .map(|d| published_ports(&d.all()))
            .unwrap_or_default()
    }

    /// Containers the runtimes' names threads forgot (or never kept) to stay bounded.
    pub fn runtimes_evicted(&self) -> u64 {
        self.docker.as_ref().map_or(0, DockerNames::evicted)
            + self.cri.as_ref().map_or(0, CriNames::evicted)
    }

    /// The container of a record's cgroup, made by `pid` (None: the hierarchy has no such
    /// cgroup any more and its process is gone).
    pub fn resolve(&mut self, cgroup: u64, pid: Option<u32>) -> Option<Container> {
        let hierarchy = self.hierarchy.clone()?;
        let unified = hierarchy.root().clone();
        if cgroup == 0 {
            return None;
        }
        if Some(cgroup) == self.root_id {
            return Some(Container::host());
        }
        // A path from another cgroup namespace (`/../…`) is not one to look up here.
        let from_process = pid
            .and_then(|p| fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
            .as_deref()
            .and_then(|text| hierarchy.path_in(text))
            .filter(|path| !path.starts_with("/.."))
            .filter(|path| hierarchy.id_of(path) == Some(cgroup))
            .map(str::to_owned);
        let path = from_process.or_else(|| self.walk_for(&unified, cgroup))?;
        let mut id = from_path(&path);
        if let Some(id) = id.as_mut() {
            id.delegated = id.delegated || !owned_by_root(&unified, &path);
        }
        let mut container = Container::from_ref(id);
        if container.nameable() {
            self.name(&mut container);
        }
        Some(container)
    }

    /// What the container's runtime calls it (and its pod): Docker for Docker's, the CRI
    /// runtime for a Kubernetes node's; a pod the runtime lists names a container it does not
    /// list yet (or the pod's own sandbox) by the pod UID its path carries.
    fn name(&self, container: &mut Container) {
        let Some(id) = container.id.as_mut() else {
            return;
        };
        let from_cri = matches!(
            id.runtime,
            Runtime::Containerd | Runtime::CriO | Runtime::Cri
        );
        let names = match (&self.docker, &self.cri) {
            (Some(docker), _) if id.runtime == Runtime::Docker => docker.names(&id.id),
            (_, Some(cri)) if from_cri => {
                let names = cri.names(&id.id);
                // The path named no runtime (the cgroupfs driver's bare id): the runtime
                // that lists the container is the one.
                if names.is_some() && id.runtime == Runtime::Cri {
                    id.runtime = cri.runtime().map_or(Runtime::Cri, |r| Runtime::of(&r));
                }
                names
            }
            _ => None,
        };
        if let Some(names) = names {
            container.name = Some(names.name).filter(|n| !n.is_empty());
            container.image = names.image;
            container.pod_name = names.pod_name;
            container.pod_namespace = names.pod_namespace;
        }
        if container.pod_name.is_none() {
            let pod = (self.cri.as_ref())
                .zip(id.pod_uid.as_deref())
                .and_then(|(cri, uid)| cri.pod(uid));
            if let Some(pod) = pod {
                container.pod_name = Some(pod.name);
                container.pod_namespace = Some(pod.namespace);
            }
        }
    }

    /// The path of cgroup `id`, walking the hierarchy again if the last walk is older than
    /// [`WALK_EVERY`].
    fn walk_for(&mut self, unified: &Path, id: u64) -> Option<String> {
        if let Some(path) = self.walked.get(&id) {
            return Some(path.clone());
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < WALK_EVERY) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.walked = walk(unified);
        self.walked.get(&id).cloned()
    }
}

impl Default for ContainerResolver {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether root owns every directory from the hierarchy's root down to `path` (the runtimes
/// that run as root make their cgroups so; a delegated subtree belongs to its user).
fn owned_by_root(unified: &Path, path: &str) -> bool {
    let mut dir = unified.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == ".." {
            return false;
        }
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == 0 => {}
            _ => return false,
        }
    }
    true
}

/// Docker's published ports as mappings and proxies want them: one per (container, binding),
/// with the container's addresses and network namespace.
pub fn published_ports(
    containers: &[(compact_str::CompactString, super::docker::Names)],
) -> Vec<crate::model::mapping::Published> {
    let mut out = Vec::new();
    for (id, names) in containers {
        let netns = names.pid.and_then(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|m| m.ino() as u32)
        });
        for p in &names.published {
            out.push(crate::model::mapping::Published {
                id: id.to_string(),
                name: names.name.to_string(),
                proto: p.proto.to_string(),
                host_ip: p.host_ip.to_string(),
                host_port: p.host_port,
                container_port: p.container_port,
                addresses: names.addresses.clone(),
                netns,
            });
        }
    }
    out
}

/// id → path ("/docker/…") of every cgroup below `unified`, breadth first, bounded.
fn walk(unified: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::default();
    let mut queue = std::collections::VecDeque::from([(unified.to_path_buf(), String::new())]);
    let mut visited = 0;
    while let Some((dir, path)) = queue.pop_front() {
        visited += 1;
        if visited > MAX_WALK || out.len() >= MAX_WALK {
            tracing::debug!("cgroup walk stopped at {MAX_WALK} cgroups");
            break;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Directories only, never followed through a link.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            // A name any delegated user chose: kept only if it is text (a container's never
            // is anything else).
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let child = format!("{path}/{name}");
            out.insert(meta.ino(), child.clone());
            if out.len() >= MAX_WALK {
                break;
            }
            queue.push_back((entry.path(), child));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_its_cgroup_id() {
        let Some(hierarchy) = crate::kernel::cgroups::Hierarchy::get() else {
            eprintln!("SKIPPED: no cgroup hierarchy mounted here");
            return;
        };
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = hierarchy.path_in(&text).unwrap().to_owned();
        let id = hierarchy.id_of(&path).unwrap();
        let walked = walk(hierarchy.root());
        let found = walked.get(&id).cloned().unwrap_or_else(|| "/".into());
        assert_eq!(found.trim_end_matches('/'), path.trim_end_matches('/'));
    }
}
