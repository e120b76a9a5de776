//! Which container a process runs in, from its cgroup path: the runtime and container id that
//! Docker, containerd (CRI and nerdctl), CRI-O and podman write into the names of the cgroups
//! they make, and for Kubernetes the pod UID and QoS class from the `kubepods` slices. Both
//! cgroup drivers (systemd: `docker-<id>.scope`, `kubepods-burstable-pod<uid>.slice`;
//! cgroupfs: `/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`), cgroup v1 and v2.
//!
//! Pure: the paths come from `/proc/PID/cgroup` or the cgroup v2 tree (`kernel::containers`).
//! A path is chosen by whoever made the cgroup (any user can name cgroups in a subtree
//! delegated to them), so only exact shapes count: a 64-digit lowercase hex id, a 36-character
//! UID. Anything else is not a container, never a guess.
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// The runtime whose naming a cgroup path carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Podman,
    /// A Kubernetes container under the cgroupfs driver, whose path names no runtime
    /// (containerd writes the bare id; CRI-O prefixes `crio-`).
    Cri,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Cri => "cri",
        }
    }

    /// A CRI runtime's own name for itself (`Version`'s runtime_name).
    pub fn of(runtime_name: &str) -> Self {
        match runtime_name {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => Runtime::Cri,
        }
    }
}

/// A Kubernetes pod's QoS class, from the slice the kubelet put it under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A container as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// 64 lowercase hex digits.
    pub id: CompactString,
    /// The pod's UID (dashes, as the API server spells it), under `kubepods`.
    pub pod_uid: Option<CompactString>,
    pub qos: Option<Qos>,
    /// Under a user's delegated subtree (`user@UID.service`): a rootless runtime's, or a
    /// cgroup that user named to look like one. Never looked up in the system's runtimes:
    /// anyone can read a real container's id in `/proc/PID/cgroup` and copy it.
    pub delegated: bool,
}

impl ContainerRef {
    /// The first 12 digits, as `docker ps` and `crictl ps` show it.
    pub fn short_id(&self) -> &str {
        // 64 ASCII hex digits: byte 12 is a character boundary.
        self.id.get(..12).unwrap_or(&self.id)
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID: 8-4-4-4-12 lowercase hex digits with dashes (the systemd driver writes
/// underscores in their place; the caller has put the dashes back), or a static pod's 32 hex
/// digits (the hash of its manifest: etcd, the API server).
pub fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    (b.len() == 32 && b.iter().all(hex))
        || (b.len() == 36
            && b.iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => hex(c),
            }))
}

/// A kubelet slice's name without the prefix kind's nested kubelets add
/// (`kubelet-kubepods-burstable.slice`).
fn kubelet_slice(segment: &str) -> &str {
    segment.strip_prefix("kubelet-").unwrap_or(segment)
}

/// A container id from one path segment, with the runtime its shape names. `parent` is the
/// segment above (the cgroupfs drivers put the bare id under `docker`, or under the pod).
fn container_segment<'a>(segment: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    let named = |prefix: &str| -> Option<&str> {
        let rest = segment.strip_prefix(prefix)?;
        let id = rest.strip_suffix(".scope").unwrap_or(rest);
        is_container_id(id).then_some(id)
    };
    // Prefixes whose id is the container's; `crio-conmon-` and `libpod-conmon-` are the
    // monitors beside it, not the container (their id would not parse after these prefixes).
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = named(prefix) {
            return Some((runtime, id));
        }
    }
    if !is_container_id(segment) {
        return None;
    }
    match parent {
        Some("docker") => Some((Runtime::Docker, segment)),
        Some("libpod_parent") => Some((Runtime::Podman, segment)),
        Some(p) if pod_segment(p).is_some() => Some((Runtime::Cri, segment)),
        _ => None,
    }
}

/// A pod UID from one segment: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`
/// (systemd, underscores for dashes).
fn pod_segment(segment: &str) -> Option<CompactString> {
    let uid = if let Some(slice) = kubelet_slice(segment).strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        if !slice.starts_with("kubepods") {
            return None;
        }
        &slice[at + "-pod".len()..]
    } else {
        segment.strip_prefix("pod")?
    };
    let uid: CompactString = uid.replace('_', "-").into();
    is_pod_uid(&uid).then_some(uid)
}

fn qos_segment(segment: &str) -> Option<Qos> {
    match kubelet_slice(segment) {
        "besteffort" | "kubepods-besteffort.slice" => Some(Qos::BestEffort),
        "burstable" | "kubepods-burstable.slice" => Some(Qos::Burstable),
        _ => None,
    }
}

/// The container a cgroup path belongs to: the innermost one (a Kubernetes node running in a
/// Docker container, as kind makes, names the pod's container), None for anything else.
pub fn from_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (at, runtime, id) = segments.iter().enumerate().rev().find_map(|(i, s)| {
        let parent = i.checked_sub(1).map(|p| segments[p]);
        container_segment(s, parent).map(|(r, id)| (i, r, id))
    })?;
    // The pod, if any, is above the container, below the innermost `kubepods`.
    let above = &segments[..at];
    let kubepods = above
        .iter()
        .rposition(|s| matches!(kubelet_slice(s), "kubepods" | "kubepods.slice"));
    let (pod_uid, qos) = match kubepods {
        Some(k) => {
            let pod_uid = above[k + 1..].iter().rev().find_map(|s| pod_segment(s));
            let qos = pod_uid.as_ref().map(|_| {
                above[k + 1..]
                    .iter()
                    .find_map(|s| qos_segment(s))
                    .unwrap_or(Qos::Guaranteed)
            });
            (pod_uid, qos)
        }
        None => (None, None),
    };
    let delegated = above
        .iter()
        .any(|s| s.starts_with("user@") && s.ends_with(".service"));
    Some(ContainerRef {
        runtime,
        id: id.into(),
        pod_uid,
        qos,
        delegated,
    })
}

/// The unified (v2) path of a process from its `/proc/PID/cgroup`.
pub fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// A process's cgroup path in cgroup v1 controller `controller`'s hierarchy, from its
/// `/proc/PID/cgroup` text: the `ID:LIST:/path` line whose controller list names it.
pub fn controller_path<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let list = parts.next()?;
        let path = parts.next()?;
        (!list.is_empty() && list.split(',').any(|c| c == controller)).then_some(path)
    })
}

/// A container as tracer names it: who it is from its cgroup, what its runtime calls it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// None: the host (a cgroup no container runtime made).
    pub id: Option<ContainerRef>,
    /// The runtime's name for it (Docker: without the leading `/`).
    pub name: Option<CompactString>,
    pub image: Option<CompactString>,
    pub pod_name: Option<CompactString>,
    pub pod_namespace: Option<CompactString>,
}

impl Container {
    pub fn host() -> Self {
        Container::default()
    }

    pub fn is_host(&self) -> bool {
        self.id.is_none()
    }

    /// What a column shows: `host`, the pod's `namespace/name` with the container's name, the
    /// container's name, or its short id. Untrusted text: escape it before a terminal.
    pub fn label(&self) -> CompactString {
        let Some(id) = &self.id else {
            return CompactString::const_new("host");
        };
        if id.delegated {
            return Self::delegated_label(id);
        }
        match (&self.pod_namespace, &self.pod_name, &self.name) {
            (Some(ns), Some(pod), _) => compact_str::format_compact!("{ns}/{pod}"),
            (_, _, Some(name)) => name.clone(),
            _ => id.short_id().into(),
        }
    }

    /// A user's own cgroup named like a container: `user:` and the first digits of the id
    /// its path carries (never the name of the container that id may belong to).
    pub fn delegated_label(id: &ContainerRef) -> CompactString {
        compact_str::format_compact!("user:{}", id.id.get(..7).unwrap_or(&id.id))
    }

    /// A container as its path names it, before any runtime is asked: a delegated one
    /// carries its `user:` label as its name, so every output shows that.
    pub fn from_ref(id: Option<ContainerRef>) -> Self {
        let name = id
            .as_ref()
            .filter(|id| id.delegated)
            .map(Self::delegated_label);
        Container {
            id,
            name,
            ..Container::default()
        }
    }

    /// Whether `--container WANT` selects it: `host`, its name, or its id (at least 4 digits
    /// of it, as `docker` accepts a unique prefix).
    pub fn matches(&self, want: &str) -> bool {
        match &self.id {
            None => want == "host",
            // Never selected as the container it copies the id of: only by its own label.
            Some(id) if id.delegated => self.name.as_deref() == Some(want),
            Some(id) => {
                self.name.as_deref() == Some(want) || (want.len() >= 4 && id.id.starts_with(want))
            }
        }
    }

    /// Whether `--pod NAMESPACE/NAME` selects it (or a pod UID).
    pub fn in_pod(&self, want: &str) -> bool {
        let Some(id) = self.id.as_ref().filter(|id| !id.delegated) else {
            return false;
        };
        if id.pod_uid.as_deref() == Some(want) {
            return true;
        }
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) => want.split_once('/') == Some((ns.as_str(), name.as_str())),
            _ => false,
        }
    }

    /// Whether a runtime could still name it: a container whose name (or pod's name) is not
    /// known yet, in a runtime tracer asks (Docker, a CRI runtime), not in a user's delegated
    /// subtree.
    pub fn nameable(&self) -> bool {
        self.id.as_ref().is_some_and(|id| {
            id.runtime != Runtime::Podman
                && !id.delegated
                && (self.name.is_none() || (id.pod_uid.is_some() && self.pod_name.is_none()))
        })
    }
}

/// The JSON fields that name an owner's container, flattened into an event or a row:
/// `container_id`, `container_name` (`host` for the host), `container_runtime`, `pod_uid`,
/// `pod_name`, `pod_namespace`; null when not known.
pub struct ContainerFields<'a>(pub Option<&'a Container>);

impl ContainerFields<'_> {
    /// The six values, in order, as text (None: null).
    pub fn values(&self) -> [Option<&str>; 6] {
        let Some(c) = self.0 else { return [None; 6] };
        // A user's cgroup named like a container: never an id or a runtime a consumer could
        // take for the real one's (its label says whose it is).
        if c.id.as_ref().is_some_and(|id| id.delegated) {
            return [None, c.name.as_deref(), None, None, None, None];
        }
        let id = c.id.as_ref();
        [
            id.map(|i| i.id.as_str()),
            if c.is_host() {
                Some("host")
            } else {
                c.name.as_deref()
            },
            id.map(|i| i.runtime.name()),
            id.and_then(|i| i.pod_uid.as_deref()),
            c.pod_name.as_deref(),
            c.pod_namespace.as_deref(),
        ]
    }

    pub const KEYS: [&'static str; 6] = [
        "container_id",
        "container_name",
        "container_runtime",
        "pod_uid",
        "pod_name",
        "pod_namespace",
    ];
}

impl Serialize for ContainerFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(6))?;
        for (key, value) in Self::KEYS.iter().zip(self.values()) {
            map.serialize_entry(key, &value)?;
        }
        map.end()
    }
}

/// For `#[serde(flatten, serialize_with = …)]` on an owner's container.
pub fn serialize_fields<S: serde::Serializer>(
    container: &Option<std::sync::Arc<Container>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    ContainerFields(container.as_deref()).serialize(serializer)
}

/// How long an unnamed container or an unknown cgroup waits before it is asked about again.
const ASK_AGAIN_NS: u64 = 1_000_000_000;
/// Cgroups remembered; past this the oldest is forgotten (counted).
pub const MAX_CGROUPS: usize = 4096;

/// A stage's cache of cgroup → container: one question per cgroup (and again, once a second,
/// for a container its runtime has not named yet), bounded.
pub struct Containers {
    by_cgroup: super::bounded::BoundedMap<u64, Known>,
}

struct Known {
    container: Option<std::sync::Arc<Container>>,
    asked_ns: u64,
}

impl Default for Containers {
    fn default() -> Self {
        Containers {
            by_cgroup: super::bounded::BoundedMap::new(MAX_CGROUPS),
        }
    }
}

impl Containers {
    /// The container of cgroup `cgroup` (0: not known), asking `ask` when it is new or due
    /// again. `now_ns`: monotonic.
    pub fn of(
        &mut self,
        cgroup: u64,
        now_ns: u64,
        ask: impl FnOnce() -> Option<Container>,
    ) -> Option<std::sync::Arc<Container>> {
        if cgroup == 0 {
            return None;
        }
        if let Some(known) = self.by_cgroup.get_mut(&cgroup) {
            let due = known.container.as_ref().is_none_or(|c| c.nameable())
                && now_ns.saturating_sub(known.asked_ns) >= ASK_AGAIN_NS;
            if !due {
                return known.container.clone();
            }
            let answer = ask().map(std::sync::Arc::new);
            // An answer that knows less (the process gone) does not replace what was known.
            if answer.is_some() {
                known.container = answer;
            }
            known.asked_ns = now_ns;
            return known.container.clone();
        }
        let container = ask().map(std::sync::Arc::new);
        self.by_cgroup.insert(
            cgroup,
            Known {
                container: container.clone(),
                asked_ns: now_ns,
            },
        );
        container
    }

    /// Cgroups forgotten to stay within [`MAX_CGROUPS`].
    pub fn evicted(&self) -> u64 {
        self.by_cgroup.evicted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_controllers_path_is_its_own_line() {
        let text = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/system.slice/containerd.service\n";
        assert_eq!(controller_path(text, "pids"), Some("/docker/abc"));
        assert_eq!(controller_path(text, "cpuacct"), Some("/docker/abc"));
        assert_eq!(controller_path(text, "memory"), None);
        // The v2 line is no controller's.
        assert_eq!(controller_path(text, ""), None);
        assert_eq!(unified_path(text), Some("/system.slice/containerd.service"));
    }

    const ID: &str = "aef52339d617485564dd9b8adda0ab64bc899e4e338a29cb55cc9574eb93a913";
    const UID: &str = "0f3c7b2e-5a1d-4c8e-9b6f-2d4e6a8c0b1f";

    fn c(runtime: Runtime, pod: Option<&str>, qos: Option<Qos>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            id: ID.into(),
            pod_uid: pod.map(Into::into),
            qos,
            delegated: false,
        })
    }

    fn delegated(runtime: Runtime) -> Option<ContainerRef> {
        c(runtime, None, None).map(|c| ContainerRef {
            delegated: true,
            ..c
        })
    }

    #[test]
    fn docker_under_both_drivers() {
        // cgroupfs driver, v1 and v2 (this machine's hybrid layout writes both).
        assert_eq!(
            from_path(&format!("/docker/{ID}")),
            c(Runtime::Docker, None, None)
        );
        // systemd driver.
        assert_eq!(
            from_path(&format!("/system.slice/docker-{ID}.scope")),
            c(Runtime::Docker, None, None)
        );
        // Rootless Docker under the user's delegated subtree.
        assert_eq!(
            from_path(&format!(
                "/user.slice/user-1000.slice/user@1000.service/docker.service/docker/{ID}"
            )),
            delegated(Runtime::Docker)
        );
    }

    #[test]
    fn podman_and_nerdctl() {
        assert_eq!(
            from_path(&format!("/machine.slice/libpod-{ID}.scope")),
            c(Runtime::Podman, None, None)
        );
        assert_eq!(
            from_path(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            )),
            delegated(Runtime::Podman)
        );
        assert_eq!(
            from_path(&format!("/libpod_parent/libpod-{ID}")),
            c(Runtime::Podman, None, None)
        );
        // The monitor beside the container is not the container.
        assert_eq!(
            from_path(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            from_path(&format!("/system.slice/nerdctl-{ID}.scope")),
            c(Runtime::Containerd, None, None)
        );
    }

    #[test]
    fn kubernetes_under_the_systemd_driver() {
        let u = UID.replace('-', "_");
        assert_eq!(
            from_path(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, Some(UID), Some(Qos::Burstable))
        );
        assert_eq!(
            from_path(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
            )),
            c(Runtime::CriO, Some(UID), Some(Qos::BestEffort))
        );
        // Guaranteed pods sit directly under kubepods.slice.
        assert_eq!(
            from_path(&format!(
                "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, Some(UID), Some(Qos::Guaranteed))
        );
        // CRI-O's monitor.
        assert_eq!(
            from_path(&format!(
                "/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );
    }

    #[test]
    fn kubernetes_under_the_cgroupfs_driver() {
        assert_eq!(
            from_path(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            c(Runtime::Cri, Some(UID), Some(Qos::Burstable))
        );
        assert_eq!(
            from_path(&format!("/kubepods/pod{UID}/{ID}")),
            c(Runtime::Cri, Some(UID), Some(Qos::Guaranteed))
        );
        assert_eq!(
            from_path(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            c(Runtime::CriO, Some(UID), Some(Qos::BestEffort))
        );
        // The pod's own slice (no container yet) is no container.
        assert_eq!(from_path(&format!("/kubepods/burstable/pod{UID}")), None);
    }

    #[test]
    fn a_node_in_a_container_names_the_innermost() {
        // kind: the node is a Docker container, the pods are below it.
        let other = "1".repeat(64);
        assert_eq!(
            from_path(&format!(
                "/docker/{other}/kubepods/besteffort/pod{UID}/{ID}"
            )),
            c(Runtime::Cri, Some(UID), Some(Qos::BestEffort))
        );
        // A container running systemd: the container's scope, not its init.scope.
        assert_eq!(
            from_path(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            c(Runtime::Docker, None, None)
        );
    }

    #[test]
    fn anything_else_is_the_host() {
        for path in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/system.slice/containerd.service",
            "/process_api/20c025ba9b4461a8bee412a35eeba5e4",
            // Not exactly 64 lowercase hex digits.
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/system.slice/docker-{ID}x.scope"),
            // A bare id under a parent that names no runtime.
            &format!("/mine/{ID}"),
            // A user's delegated cgroup named like a pod, with no kubepods above it: no pod.
        ] {
            assert_eq!(from_path(path), None, "{path}");
        }
        let user =
            format!("/user.slice/user-1000.slice/user@1000.service/pod{UID}/docker-{ID}.scope");
        assert_eq!(from_path(&user), delegated(Runtime::Docker));
        // Hostile bytes do not panic.
        for path in [
            "/kubepods/pod\u{e9}\u{e9}/x",
            "/kubepods.slice/kubepods-pod.slice/\u{1b}[2J",
        ] {
            assert_eq!(from_path(path), None);
        }
    }

    #[test]
    fn the_unified_line_is_the_one_looked_up() {
        // This machine's hybrid layout with Docker's cgroupfs driver: the same path in every
        // hierarchy, the unified one (`0::`) is the one the kernel's cgroup id names.
        let hybrid = format!(
            "9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
        );
        let path = unified_path(&hybrid).unwrap();
        assert_eq!(path, format!("/docker/{ID}"));
        assert_eq!(from_path(path), c(Runtime::Docker, None, None));
        // v1 only: no unified line (and no cgroup id that names anything).
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n");
        assert_eq!(unified_path(&v1), None);
        // v2 only, systemd driver.
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            from_path(unified_path(&v2).unwrap()),
            c(Runtime::Docker, None, None)
        );
        // The host, in a sandbox whose memory cgroup has a 32-digit name.
        let host = "4:memory:/process_api/20c025ba9b4461a8bee412a35eeba5e4\n0::/\n";
        assert_eq!(from_path(unified_path(host).unwrap()), None);
        assert_eq!(
            c(Runtime::Docker, None, None).unwrap().short_id(),
            "aef52339d617"
        );
    }

    #[test]
    fn the_cache_asks_once_and_again_only_for_what_it_lacks() {
        let mut cache = Containers::default();
        let mut asked = 0;
        let docker = Container {
            id: c(Runtime::Docker, None, None),
            ..Container::default()
        };
        let mut ask = |answer: Option<Container>| {
            asked += 1;
            answer
        };
        // Not known: not asked.
        assert_eq!(cache.of(0, 0, || ask(None)), None);
        // The host: asked once.
        assert!(cache
            .of(1, 0, || ask(Some(Container::host())))
            .unwrap()
            .is_host());
        assert!(cache.of(1, 5_000_000_000, || ask(None)).unwrap().is_host());
        // A container not named yet: asked again after a second, not before.
        let first = cache.of(7, 0, || ask(Some(docker.clone()))).unwrap();
        assert_eq!(first.label(), "aef52339d617");
        cache.of(7, 500_000_000, || ask(Some(docker.clone())));
        let named = Container {
            name: Some("web1".into()),
            ..docker.clone()
        };
        let second = cache
            .of(7, 1_500_000_000, || ask(Some(named.clone())))
            .unwrap();
        assert_eq!(second.label(), "web1");
        // Named: never asked again; a later "don't know" never forgets the name.
        assert_eq!(
            cache.of(7, 9_000_000_000, || ask(None)).unwrap().label(),
            "web1"
        );
        assert_eq!(asked, 3);
        assert!(second.matches("web1") && second.matches("aef5") && !second.matches("aef"));
        assert!(Container::host().matches("host") && !second.matches("host"));
    }

    #[test]
    fn pods_are_labelled_and_selected_by_namespace_and_name() {
        let pod = Container {
            id: c(Runtime::Containerd, Some(UID), Some(Qos::Burstable)),
            name: Some("web".into()),
            pod_name: Some("web-5d8f".into()),
            pod_namespace: Some("shop".into()),
            ..Container::default()
        };
        assert_eq!(pod.label(), "shop/web-5d8f");
        assert!(pod.in_pod("shop/web-5d8f") && pod.in_pod(UID) && !pod.in_pod("shop/web"));
        assert!(!Container::host().in_pod("shop/web-5d8f"));
    }

    #[test]
    fn static_pods_and_kinds_nested_kubelet() {
        // A static pod's UID is its manifest's hash: 32 hex digits.
        let hash = "6bd1b5e8d1d0a3c9e3f4a5b6c7d8e9f0";
        assert_eq!(
            from_path(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            c(Runtime::Cri, Some(hash), Some(Qos::Burstable))
        );
        assert_eq!(
            from_path(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, Some(hash), Some(Qos::Burstable))
        );
        // kind: the node's kubelet prefixes its slices.
        let u = UID.replace('-', "_");
        assert_eq!(
            from_path(&format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, Some(UID), Some(Qos::BestEffort))
        );
        assert!(is_pod_uid(UID) && is_pod_uid(hash) && !is_pod_uid(&hash[1..]));
    }

    #[test]
    fn a_delegated_container_is_never_taken_for_the_one_it_copies() {
        let spoof = Container::from_ref(delegated(Runtime::Docker));
        assert_eq!(spoof.label(), "user:aef5233");
        assert!(!spoof.matches("aef52339d617") && !spoof.nameable());
        assert!(spoof.matches("user:aef5233"));
        // In JSON: its label, and no id or runtime a consumer could take for the real one's.
        assert_eq!(
            ContainerFields(Some(&spoof)).values(),
            [None, Some("user:aef5233"), None, None, None, None]
        );
        let pod = Container {
            id: from_path(&format!(
                "/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}"
            )),
            ..Container::default()
        };
        assert!(pod.id.as_ref().unwrap().delegated);
        assert!(!pod.in_pod(UID));
    }
}
