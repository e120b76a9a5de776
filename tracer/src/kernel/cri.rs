//! Pod and container names from a Kubernetes node's container runtime, over the Container
//! Runtime Interface (CRI: gRPC on the runtime's unix socket — containerd's CRI plugin,
//! CRI-O), on a thread of its own so a slow or absent runtime never holds up the events.
//!
//! Read-only calls only (`Version`, `ListPodSandbox`, `ListContainers`), the same ones
//! `crictl pods` and `crictl ps` make. Both lists are read at start and every
//! [`RELIST_EVERY`] (removed containers are forgotten); a container a stage asks about that
//! they do not hold is looked up at once, by id (a list filtered to it and its pod), so a new
//! container's first socket call is named as a rule. Never a dependency: with no socket, or one without CRI
//! (Docker's own containerd has the plugin off), tracer says so once and pods are named by
//! their UID only. Answers are bounded (bytes per answer, containers kept) and their text is
//! only ever data (escaped before a terminal, like every name).
use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use compact_str::CompactString;
use foldhash::{HashMap, HashSet};

use super::docker::Names;

/// Containers (and pods) kept from one list at most; the rest are not named (counted).
const MAX_CONTAINERS: usize = 4096;
/// Bytes of one answer read at most.
const MAX_ANSWER: usize = 4 << 20;
/// How long a stage waits, once per container, for the name of one it sees first.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// One call's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Both lists read again this often (removed containers are forgotten).
const RELIST_EVERY: Duration = Duration::from_secs(30);

/// How often sockets that did not answer `Version` are asked again.
const FIND_AGAIN: Duration = Duration::from_secs(10);

/// Ids waiting to be looked up, at most.
const MAX_ASKED: usize = 256;
/// How long an id the runtime does not list is believed unknown.
const UNKNOWN_FOR: Duration = Duration::from_secs(10);

/// Where CRI runtimes listen by default, under the node's `/run` (`TRACER_HOST_RUN` when it is
/// mounted elsewhere, as in the DaemonSet; `CONTAINER_RUNTIME_ENDPOINT`, as crictl reads it,
/// names one socket instead).
const SOCKETS: [&str; 3] = [
    "containerd/containerd.sock",
    "crio/crio.sock",
    "k3s/containerd/containerd.sock",
];

/// The messages of `runtime.v1` (k8s.io/cri-api `api.proto`) tracer reads: only the fields it
/// uses, with the proto's own tags (protobuf skips the rest).
mod api {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<Filter>,
    }
    /// `PodSandboxFilter` and `ContainerFilter` alike: an id (tag 1) or a state (tag 2).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Filter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub state: Option<StateValue>,
    }
    /// `PodSandboxStateValue` (SANDBOX_READY = 0) and `ContainerStateValue` (CONTAINER_RUNNING
    /// = 1) alike.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StateValue {
        #[prost(int32, tag = "1")]
        pub state: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<Filter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "4")]
        pub image: Option<ImageSpec>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        /// What the kubelet passed: often the image's id (`sha256:…`) on a real node.
        #[prost(string, tag = "1")]
        pub image: String,
        /// The name the pod's spec gave (newer runtimes).
        #[prost(string, tag = "18")]
        pub user_specified_image: String,
    }
}

/// A pod as the runtime names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: CompactString,
    pub namespace: CompactString,
}

#[derive(Default)]
struct State {
    /// Container id → its names (and its pod's).
    containers: HashMap<CompactString, Names>,
    /// Pod UID → its name, for a cgroup of the pod's own (the sandbox) or a container the
    /// last list did not have yet.
    pods: HashMap<CompactString, Pod>,
    /// Ids a stage asked about that the lists did not hold (at most [`MAX_ASKED`]).
    asked: HashSet<CompactString>,
    /// Ids the runtime did not have when looked up, and when: not asked again for
    /// [`UNKNOWN_FOR`] (a cgroup shaped like a container the runtime does not list).
    unknown: HashMap<CompactString, Instant>,
    /// Ids a stage has waited for once already (cleared when full).
    waited: HashSet<CompactString>,
    /// Lists read and lookups answered so far (a waiting stage watches it move).
    lists: u64,
    /// The most containers past the cap in one list.
    evicted: u64,
    /// The runtime answered its last call, in time.
    healthy: bool,
    /// "containerd", "cri-o" … from `Version`.
    runtime: Option<CompactString>,
}

/// The CRI names thread's shared state, and how it is woken.
#[derive(Clone)]
pub struct CriNames {
    shared: Arc<(Mutex<State>, Condvar)>,
    wake: Arc<tokio::sync::Notify>,
}

/// Sockets to try: `CONTAINER_RUNTIME_ENDPOINT` alone when set, else the usual places that
/// exist.
fn candidates() -> Vec<PathBuf> {
    if let Ok(endpoint) = std::env::var("CONTAINER_RUNTIME_ENDPOINT") {
        let path = endpoint.strip_prefix("unix://").unwrap_or(&endpoint);
        return vec![PathBuf::from(path)];
    }
    let run = std::env::var_os("TRACER_HOST_RUN").unwrap_or_else(|| "/run".into());
    SOCKETS
        .iter()
        .map(|s| PathBuf::from(&run).join(s))
        .filter(|p| p.exists())
        .collect()
}

impl CriNames {
    /// Starts looking for a CRI runtime on its thread, if a socket is there (said once
    /// either way: here, or by the thread once it knows whether the socket speaks CRI).
    pub fn start() -> Option<Self> {
        let sockets = candidates();
        if sockets.is_empty() {
            tracing::info!(
                "no CRI runtime socket (containerd, CRI-O): pods are named by their UID only"
            );
            return None;
        }
        let names = CriNames {
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let thread = names.clone();
        let spawned = std::thread::Builder::new()
            .name("tracer-cri".into())
            .spawn(move || thread.run(sockets));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the CRI names thread: {e}");
            return None;
        }
        Some(names)
    }

    /// The runtime's names for container `id`, if known now. An id the lists do not hold is
    /// looked up by the thread; the first time, while the runtime answers, the caller waits
    /// for that at most [`FIRST_WAIT`].
    pub fn names(&self, id: &str) -> Option<Names> {
        let (lock, ready) = &*self.shared;
        let mut state = lock.lock().ok()?;
        if let Some(n) = state.containers.get(id) {
            return Some(n.clone());
        }
        if state
            .unknown
            .get(id)
            .is_some_and(|at| at.elapsed() < UNKNOWN_FOR)
        {
            return None;
        }
        if state.asked.len() >= MAX_ASKED && !state.asked.contains(id) {
            // Too many questions waiting: asked again at the stage's next look.
            return None;
        }
        state.asked.insert(id.into());
        self.wake.notify_one();
        if !state.healthy || state.waited.contains(id) {
            return None;
        }
        if state.waited.len() >= MAX_CONTAINERS {
            state.waited.clear();
        }
        state.waited.insert(id.into());
        let (state, _) = ready
            .wait_timeout_while(state, FIRST_WAIT, |s| {
                s.healthy && !s.containers.contains_key(id) && !s.unknown.contains_key(id)
            })
            .ok()?;
        state.containers.get(id).cloned()
    }

    /// The pod with UID `uid`, if the last list had it.
    pub fn pod(&self, uid: &str) -> Option<Pod> {
        self.shared.0.lock().ok()?.pods.get(uid).cloned()
    }

    /// The runtime's own name ("containerd", "cri-o"), once it answered.
    pub fn runtime(&self) -> Option<CompactString> {
        self.shared.0.lock().ok()?.runtime.clone()
    }

    /// Containers past the cap (the most in one list): not named.
    pub fn evicted(&self) -> u64 {
        self.shared.0.lock().map_or(0, |s| s.evicted)
    }

    /// Waits (at most `timeout`) for the first lists.
    pub fn wait_listed(&self, timeout: Duration) {
        let (lock, ready) = &*self.shared;
        if let Ok(state) = lock.lock() {
            let _ = ready.wait_timeout_while(state, timeout, |s| s.lists == 0);
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let (lock, ready) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            change(&mut state);
        }
        ready.notify_all();
    }

    fn run(self, sockets: Vec<PathBuf>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("CRI names: {e}");
                return;
            }
        };
        runtime.block_on(async move {
            // A runtime starting (or restarting) with tracer is looked for again, quietly,
            // every FIND_AGAIN.
            let mut said = false;
            loop {
                if let Some((socket, client)) = self.find(&sockets, !said).await {
                    self.follow(&socket, client).await;
                }
                said = true;
                tokio::time::sleep(FIND_AGAIN).await;
            }
        });
    }

    /// The first socket that answers CRI's `Version` (`say`: log what each one answered).
    async fn find(&self, sockets: &[PathBuf], say: bool) -> Option<(PathBuf, Client)> {
        for socket in sockets {
            let answer = async {
                let mut client = Client::connect(socket).await?;
                let v: api::VersionResponse = client
                    .call(
                        "Version",
                        api::VersionRequest {
                            version: "v1".into(),
                        },
                    )
                    .await?;
                Ok::<_, String>((client, v))
            };
            match answer.await {
                Ok((client, v)) => {
                    tracing::info!(
                        "CRI runtime {} {} at {}: pods and containers named by it",
                        crate::text::escape(&v.runtime_name),
                        crate::text::escape(&v.runtime_version),
                        socket.display()
                    );
                    let name = CompactString::from(v.runtime_name.as_str());
                    self.update(|s| {
                        s.healthy = true;
                        s.runtime = (!name.is_empty()).then_some(name);
                    });
                    return Some((socket.clone(), client));
                }
                Err(e) if say => tracing::info!(
                    "no CRI at {}: {}",
                    socket.display(),
                    crate::text::escape_log(&e)
                ),
                Err(_) => {}
            }
        }
        if say {
            tracing::info!("no CRI runtime answers: pods are named by their UID only (asked again every {FIND_AGAIN:?})");
        }
        // Nobody waits for lists that will not come.
        self.update(|s| s.lists = 1);
        None
    }

    /// Reads both lists, then waits: a stage's question is looked up at once, and the lists
    /// are read again every [`RELIST_EVERY`]. A connection that fails is made again at the
    /// next call.
    async fn follow(&self, socket: &std::path::Path, client: Client) {
        let mut client = Some(client);
        let mut listed: Option<Instant> = None;
        loop {
            if client.is_none() {
                client = Client::connect(socket).await.ok();
            }
            let Some(c) = client.as_mut() else {
                self.failed(socket, "cannot connect");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let answer = if listed.is_none_or(|t| t.elapsed() >= RELIST_EVERY) {
                listed = Some(Instant::now());
                read_lists(c, None)
                    .await
                    .map(|(pods, containers)| self.update(|s| s.take(pods, containers)))
            } else {
                self.look_up_asked(c).await
            };
            if let Err(e) = answer {
                self.failed(socket, &e);
                client = None;
            }
            let next = listed.map_or(Duration::ZERO, |t| RELIST_EVERY.saturating_sub(t.elapsed()));
            let _ = tokio::time::timeout(next, async {
                while self.shared.0.lock().is_ok_and(|s| s.asked.is_empty()) {
                    self.wake.notified().await;
                }
            })
            .await;
        }
    }

    /// The ids stages asked about, each looked up alone (its container, then its pod).
    async fn look_up_asked(&self, client: &mut Client) -> Result<(), String> {
        let asked: Vec<CompactString> = match self.shared.0.lock() {
            Ok(mut s) => s.asked.drain().collect(),
            Err(_) => return Ok(()),
        };
        for id in asked {
            let (_, containers) = read_lists(client, Some((None, id.as_str()))).await?;
            let sandbox = containers.first().map(|c| c.pod_sandbox_id.clone());
            let pods = match sandbox {
                Some(sandbox) if !sandbox.is_empty() => {
                    read_lists(client, Some((Some(sandbox.as_str()), "")))
                        .await?
                        .0
                }
                _ => Vec::new(),
            };
            self.update(|s| s.add(&id, pods, containers));
        }
        Ok(())
    }

    /// A call failed: said once when the runtime stops answering, quietly after.
    fn failed(&self, socket: &std::path::Path, e: &str) {
        let was_healthy = self.shared.0.lock().is_ok_and(|s| s.healthy);
        let e = crate::text::escape_log(e);
        if was_healthy {
            tracing::info!(
                "the CRI runtime at {} stopped answering: {e}",
                socket.display()
            );
        } else {
            tracing::debug!("CRI at {}: {e}", socket.display());
        }
        self.update(|s| {
            s.healthy = false;
            s.lists += 1;
        });
    }
}

impl State {
    /// A container looked up by id (and its pod): added, or remembered as unknown a while.
    fn add(&mut self, id: &str, pods: Vec<api::PodSandbox>, containers: Vec<api::Container>) {
        let pod = pods.into_iter().find_map(|p| {
            let meta = p.metadata?;
            let pod = Pod {
                name: meta.name.as_str().into(),
                namespace: meta.namespace.as_str().into(),
            };
            if self.pods.len() < MAX_CONTAINERS {
                self.pods.insert(meta.uid.as_str().into(), pod.clone());
            } else {
                self.evicted += 1;
            }
            Some(pod)
        });
        match containers.into_iter().find(|c| c.id == id) {
            Some(c) if self.containers.len() < MAX_CONTAINERS => {
                self.containers.insert(id.into(), names_of(c, pod.as_ref()));
            }
            found => {
                // Past the cap (counted), or not the runtime's: not asked again for a while.
                self.evicted += u64::from(found.is_some());
                self.unknown.retain(|_, at| at.elapsed() < UNKNOWN_FOR);
                if self.unknown.len() < MAX_CONTAINERS {
                    self.unknown.insert(id.into(), Instant::now());
                }
            }
        }
        self.healthy = true;
        self.lists += 1;
    }

    /// One reading of both lists replaces what was known.
    fn take(&mut self, pods: Vec<api::PodSandbox>, containers: Vec<api::Container>) {
        let mut by_sandbox: HashMap<String, Pod> = HashMap::default();
        let over = pods.len().saturating_sub(MAX_CONTAINERS)
            + containers.len().saturating_sub(MAX_CONTAINERS);
        self.evicted = self.evicted.max(over as u64);
        self.pods.clear();
        for sandbox in pods.into_iter().take(MAX_CONTAINERS) {
            let Some(meta) = sandbox.metadata else {
                continue;
            };
            let pod = Pod {
                name: meta.name.as_str().into(),
                namespace: meta.namespace.as_str().into(),
            };
            self.pods.insert(meta.uid.as_str().into(), pod.clone());
            by_sandbox.insert(sandbox.id, pod);
        }
        self.containers.clear();
        for c in containers.into_iter().take(MAX_CONTAINERS) {
            let pod = by_sandbox.get(&c.pod_sandbox_id);
            self.containers
                .insert(c.id.as_str().into(), names_of(c, pod));
        }
        self.healthy = true;
        self.lists += 1;
    }
}

/// What the runtime calls a container, in its pod.
fn names_of(c: api::Container, pod: Option<&Pod>) -> Names {
    Names {
        name: c.metadata.map(|m| m.name).unwrap_or_default().into(),
        image: c
            .image
            .map(|i| {
                let name = if i.user_specified_image.is_empty() {
                    i.image
                } else {
                    i.user_specified_image
                };
                CompactString::from(name)
            })
            .filter(|i| !i.is_empty()),
        pod_name: pod.map(|p| p.name.clone()),
        pod_namespace: pod.map(|p| p.namespace.clone()),
        ..Names::default()
    }
}

/// The ready pods and running containers (`only: None`: what a node has now, without the
/// exited ones a busy node keeps by the thousand), or just pod sandbox `SANDBOX` / container
/// `ID` whatever its state (`Some((Some(SANDBOX), _))`, `Some((None, ID))`).
async fn read_lists(
    client: &mut Client,
    only: Option<(Option<&str>, &str)>,
) -> Result<(Vec<api::PodSandbox>, Vec<api::Container>), String> {
    let by_id = |id: &str| {
        Some(api::Filter {
            id: id.into(),
            state: None,
        })
    };
    let in_state = |state| {
        Some(api::Filter {
            id: String::new(),
            state: Some(api::StateValue { state }),
        })
    };
    let pods = match only {
        Some((None, _)) => Vec::new(),
        Some((Some(sandbox), _)) => {
            let request = api::ListPodSandboxRequest {
                filter: by_id(sandbox),
            };
            let r: api::ListPodSandboxResponse = client.call("ListPodSandbox", request).await?;
            return Ok((r.items, Vec::new()));
        }
        None => {
            // SANDBOX_READY
            let request = api::ListPodSandboxRequest {
                filter: in_state(0),
            };
            let r: api::ListPodSandboxResponse = client.call("ListPodSandbox", request).await?;
            r.items
        }
    };
    // CONTAINER_RUNNING for the list; any state for one id.
    let filter = match only {
        Some((_, id)) => by_id(id),
        None => in_state(1),
    };
    let containers: api::ListContainersResponse = client
        .call("ListContainers", api::ListContainersRequest { filter })
        .await?;
    Ok((pods, containers.containers))
}

/// A gRPC channel to the runtime's socket (HTTP/2 over the unix socket, by tonic).
struct Client {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Client {
    async fn connect(socket: &std::path::Path) -> Result<Self, String> {
        let socket = socket.to_path_buf();
        // The URI is required and never dialled: the connector opens the unix socket.
        let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel =
            endpoint.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        let channel = tokio::time::timeout(CALL_TIMEOUT, channel)
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_ANSWER);
        Ok(Client { grpc })
    }

    /// One unary call of `runtime.v1.RuntimeService`.
    async fn call<Q, A>(&mut self, method: &str, request: Q) -> Result<A, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let path = format!("/runtime.v1.RuntimeService/{method}");
        let path = hyper::http::uri::PathAndQuery::try_from(path).map_err(|e| e.to_string())?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let call = async {
            self.grpc.ready().await.map_err(|e| e.to_string())?;
            self.grpc
                .unary(tonic::Request::new(request), path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("{method}: {:?} {}", status.code(), status.message()))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| format!("{method}: no answer in time"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, name: &str, ns: &str, uid: &str) -> api::PodSandbox {
        api::PodSandbox {
            id: id.into(),
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: ns.into(),
            }),
        }
    }

    fn container(id: &str, sandbox: &str, name: &str) -> api::Container {
        api::Container {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            metadata: Some(api::ContainerMetadata { name: name.into() }),
            image: Some(api::ImageSpec {
                image: "sha256:0e3c8f2a".into(),
                user_specified_image: "docker.io/library/nginx:1.27".into(),
            }),
        }
    }

    #[test]
    fn a_list_names_containers_with_their_pods() {
        let mut s = State::default();
        s.take(
            vec![sandbox(
                "sb1",
                "web-0",
                "shop",
                "0f3c7b2e-5a1d-4c8e-9b6f-2d4e6a8c0b1f",
            )],
            vec![
                container("c1", "sb1", "nginx"),
                container("c2", "gone", "x"),
            ],
        );
        let n = &s.containers["c1"];
        assert_eq!(n.name, "nginx");
        assert_eq!(n.image.as_deref(), Some("docker.io/library/nginx:1.27"));
        assert_eq!(n.pod_name.as_deref(), Some("web-0"));
        assert_eq!(n.pod_namespace.as_deref(), Some("shop"));
        // A container whose sandbox the list did not have: its own name, no pod.
        assert_eq!(s.containers["c2"].pod_name, None);
        assert_eq!(
            s.pods["0f3c7b2e-5a1d-4c8e-9b6f-2d4e6a8c0b1f"].name.as_str(),
            "web-0"
        );
        // The next reading replaces it: removed containers are forgotten.
        s.take(vec![], vec![container("c3", "sb2", "redis")]);
        assert!(!s.containers.contains_key("c1"));
        assert!(s.pods.is_empty());
        assert_eq!(s.lists, 2);
    }

    #[test]
    fn a_looked_up_container_is_added_and_a_missing_one_remembered() {
        let mut s = State::default();
        s.add(
            "c1",
            vec![sandbox("sb1", "web-0", "shop", "uid-1")],
            vec![container("c1", "sb1", "httpd")],
        );
        assert_eq!(s.containers["c1"].pod_name.as_deref(), Some("web-0"));
        assert_eq!(s.pods["uid-1"].namespace.as_str(), "shop");
        s.add("c9", vec![], vec![]);
        assert!(s.unknown.contains_key("c9"));
        assert!(!s.containers.contains_key("c9"));
        assert_eq!(s.lists, 2);
    }

    #[test]
    fn a_list_past_the_cap_is_cut_and_counted() {
        let mut s = State::default();
        let many: Vec<_> = (0..MAX_CONTAINERS + 10)
            .map(|i| container(&format!("c{i}"), "sb", "x"))
            .collect();
        s.take(vec![], many);
        assert_eq!(s.containers.len(), MAX_CONTAINERS);
        assert_eq!(s.evicted, 10);
    }

    #[test]
    fn messages_decode_with_the_proto_tags() {
        use prost::Message;
        // ListContainersResponse{containers: [{id: "c1", pod_sandbox_id: "sb1",
        // metadata: {name: "web"}, image: {image: "img"}, state: RUNNING (6) = 1}]}, as a
        // runtime encodes it (field 6, unknown here, is skipped).
        let inner: Vec<u8> = [
            &[0x0a, 2][..],
            b"c1",
            &[0x12, 3],
            b"sb1",
            &[0x1a, 5, 0x0a, 3],
            b"web",
            &[0x22, 5, 0x0a, 3],
            b"img",
            &[0x30, 1],
        ]
        .concat();
        let mut bytes = vec![0x0a, inner.len() as u8];
        bytes.extend(&inner);
        let r = api::ListContainersResponse::decode(bytes.as_slice()).unwrap();
        let c = &r.containers[0];
        assert_eq!((c.id.as_str(), c.pod_sandbox_id.as_str()), ("c1", "sb1"));
        assert_eq!(c.metadata.as_ref().unwrap().name, "web");
        assert_eq!(c.image.as_ref().unwrap().image, "img");
    }
}
