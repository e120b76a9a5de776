//! Docker's names for its containers, from the Engine API on its unix socket (read-only
//! calls: list, inspect, and the event stream that says when a container is created or
//! renamed), on a thread of its own so a slow or absent daemon never holds up the events.
//!
//! Never a dependency: without the socket tracer says so once and names containers by id.
//! Answers are bounded (bytes read per answer, containers remembered) and their text is only
//! ever data (escaped before a terminal, like every name).
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use compact_str::CompactString;
use foldhash::{HashMap, HashSet};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Containers remembered (the oldest named is forgotten past this).
const MAX_CONTAINERS: usize = 4096;
/// Bytes of one answer read at most.
const MAX_ANSWER: usize = 4 << 20;
/// How long a stage waits, once per container, for the name of one it sees first.
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// One call's time limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A port Docker publishes for a container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// "tcp" or "udp".
    pub proto: CompactString,
    pub container_port: u16,
    /// Empty: every address.
    pub host_ip: CompactString,
    pub host_port: u16,
}

/// What Docker calls a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    pub name: CompactString,
    pub image: Option<CompactString>,
    /// From the kubelet's labels, when Kubernetes runs its pods on Docker.
    pub pod_name: Option<CompactString>,
    pub pod_namespace: Option<CompactString>,
    /// Its address on its network(s).
    pub addresses: Vec<std::net::IpAddr>,
    pub published: Vec<Published>,
    /// Its main process.
    pub pid: Option<u32>,
}

/// How long Docker's "no such container" is believed.
const UNKNOWN_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    names: HashMap<CompactString, Names>,
    /// Insertion order, to forget the oldest.
    order: VecDeque<CompactString>,
    /// Ids Docker answered 404 for, and when.
    unknown: HashMap<CompactString, Instant>,
    /// Ids a stage asked about, not yet answered (at most [`MAX_WANTED`]).
    wanted: VecDeque<CompactString>,
    /// Ids a stage has waited for once already (cleared when full).
    waited: HashSet<CompactString>,
    evicted: u64,
    /// The list at start is done (or failed).
    listed: bool,
    /// Docker's last answer came, in time: only then does a stage wait, briefly, for a name.
    healthy: bool,
}

/// Ids waiting to be asked about at once, at most.
const MAX_WANTED: usize = 256;

impl State {
    fn insert(&mut self, id: CompactString, names: Names) {
        self.unknown.remove(&id);
        if self.names.insert(id.clone(), names).is_none() {
            self.order.push_back(id);
            while self.order.len() > MAX_CONTAINERS {
                if let Some(old) = self.order.pop_front() {
                    self.names.remove(&old);
                    self.waited.remove(&old);
                    self.evicted += 1;
                }
            }
        }
    }

    /// A container removed: its names go (not counted as evicted: it is gone).
    fn forget(&mut self, id: &str) {
        if self.names.remove(id).is_some() {
            self.order.retain(|o| o != id);
        }
        self.waited.remove(id);
    }

    fn unknown(&self, id: &str) -> bool {
        self.unknown
            .get(id)
            .is_some_and(|at| at.elapsed() < UNKNOWN_FOR)
    }
}

/// The names thread's shared state, and how it is woken.
#[derive(Clone)]
pub struct DockerNames {
    shared: Arc<(Mutex<State>, Condvar)>,
    /// Wakes the thread when a stage wants an id looked up.
    wake: Arc<tokio::sync::Notify>,
}

/// The Engine API's socket: `DOCKER_HOST=unix://…` or the default.
fn socket_path() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

impl DockerNames {
    /// Starts following Docker, if its socket is there (said once either way).
    pub fn start() -> Option<Self> {
        let socket = socket_path();
        if !socket.exists() {
            tracing::info!(
                "no Docker Engine socket at {}: containers are named by their id only",
                socket.display()
            );
            return None;
        }
        // Believed to answer until a call fails.
        let state = State {
            healthy: true,
            ..State::default()
        };
        let names = DockerNames {
            shared: Arc::new((Mutex::new(state), Condvar::new())),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let thread = names.clone();
        let spawned = std::thread::Builder::new()
            .name("tracer-docker".into())
            .spawn(move || thread.run(socket));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the Docker names thread: {e}");
            return None;
        }
        Some(names)
    }

    /// Docker's names for container `id`, if known now. An id not known yet is asked about
    /// (on the names thread); the first time, while Docker answers in time, the caller waits
    /// for it at most [`FIRST_WAIT`], so a container's first socket call is named as a rule.
    pub fn names(&self, id: &str) -> Option<Names> {
        let (lock, ready) = &*self.shared;
        let mut state = lock.lock().ok()?;
        if let Some(n) = state.names.get(id) {
            return Some(n.clone());
        }
        if state.unknown(id) {
            return None;
        }
        let id = CompactString::from(id);
        if !state.wanted.contains(&id) && state.wanted.len() < MAX_WANTED {
            state.wanted.push_back(id.clone());
            self.wake.notify_one();
        }
        if !state.healthy || state.waited.contains(&id) {
            return None;
        }
        if state.waited.len() >= MAX_CONTAINERS {
            state.waited.clear();
        }
        state.waited.insert(id.clone());
        let (state, _) = ready
            .wait_timeout_while(state, FIRST_WAIT, |s| {
                !s.names.contains_key(&id) && !s.unknown(&id)
            })
            .ok()?;
        state.names.get(&id).cloned()
    }

    /// Waits (at most `timeout`) for the list of running containers at start.
    pub fn wait_listed(&self, timeout: Duration) {
        let (lock, ready) = &*self.shared;
        if let Ok(state) = lock.lock() {
            let _ = ready.wait_timeout_while(state, timeout, |s| !s.listed);
        }
    }

    /// Every container Docker told us of, with its names.
    pub fn all(&self) -> Vec<(CompactString, Names)> {
        let (lock, _) = &*self.shared;
        lock.lock()
            .map(|s| {
                s.names
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Containers forgotten to stay bounded.
    pub fn evicted(&self) -> u64 {
        self.shared.0.lock().map_or(0, |s| s.evicted)
    }

    fn run(self, socket: PathBuf) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("Docker names: {e}");
                return;
            }
        };
        runtime.block_on(async move {
            let events = tokio::spawn(self.clone().follow_events(socket.clone()));
            self.list(&socket).await;
            self.answer_requests(&socket).await;
            events.abort();
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let (lock, ready) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            change(&mut state);
        }
        ready.notify_all();
    }

    /// The running containers at start.
    async fn list(&self, socket: &PathBuf) {
        match get(socket, "/containers/json").await {
            Ok(Value::Array(list)) => {
                self.update(|s| s.healthy = true);
                for c in list.iter().take(MAX_CONTAINERS) {
                    if let Some(id) = c.get("Id").and_then(Value::as_str) {
                        self.inspect(socket, id).await;
                    }
                }
            }
            Ok(_) => tracing::debug!("Docker: the container list was not a list"),
            Err(e) => tracing::info!("Docker Engine at {}: {e}", socket.display()),
        }
        self.update(|s| s.listed = true);
    }

    async fn inspect(&self, socket: &PathBuf, id: &str) {
        if !is_id(id) {
            return;
        }
        match get(socket, &format!("/containers/{id}/json")).await {
            Ok(v) => match parse_inspect(&v) {
                Some(names) => self.update(|s| {
                    s.healthy = true;
                    s.insert(id.into(), names);
                }),
                None => self.update(|s| {
                    s.unknown.insert(id.into(), Instant::now());
                }),
            },
            Err(Failure::NotFound) => self.update(|s| {
                s.healthy = true;
                if s.unknown.len() >= MAX_CONTAINERS {
                    s.unknown.retain(|_, at| at.elapsed() < UNKNOWN_FOR);
                }
                if s.unknown.len() < MAX_CONTAINERS {
                    s.unknown.insert(id.into(), Instant::now());
                }
            }),
            Err(e) => {
                // Docker did not answer (in time): asked again on the stage's next question,
                // and nobody waits for it meanwhile.
                tracing::debug!("Docker: inspecting {id}: {e}");
                self.update(|s| s.healthy = false);
            }
        }
    }

    /// Ids the stage asked about, one call each; never a blocking wait (the event stream
    /// shares this thread).
    async fn answer_requests(&self, socket: &PathBuf) {
        loop {
            let next = {
                let Ok(mut state) = self.shared.0.lock() else {
                    return;
                };
                state.wanted.pop_front()
            };
            match next {
                Some(id) => self.inspect(socket, &id).await,
                None => self.wake.notified().await,
            }
        }
    }

    /// Containers created, started, renamed, stopped or removed while tracer runs: named
    /// before their first socket call, as a rule; a stopped one's ports and addresses are
    /// read again (Docker clears them), a removed one is forgotten.
    async fn follow_events(self, socket: PathBuf) {
        // {"type":["container"],"event":["create","start","rename","die","destroy"]}
        let path = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22create%22%2C%22start%22%2C%22rename%22%2C%22die%22%2C%22destroy%22%5D%7D";
        loop {
            if let Err(e) = self.events_once(&socket, path).await {
                tracing::debug!("Docker events: {e}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// One connection to the event stream, line by line (each line bounded), for as long as
    /// Docker keeps it open.
    async fn events_once(&self, socket: &PathBuf, path: &str) -> Result<(), Failure> {
        let mut body = request(socket, path).await?;
        let mut line = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Other(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for &b in data.iter() {
                if b != b'\n' {
                    if line.len() < 64 * 1024 {
                        line.push(b);
                    }
                    continue;
                }
                let event: Option<Value> = serde_json::from_slice(&line).ok();
                line.clear();
                let id = event
                    .as_ref()
                    .and_then(|e| e.get("id").or_else(|| e.get("Actor")?.get("ID")))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let action = event
                    .as_ref()
                    .and_then(|e| e.get("Action").or_else(|| e.get("status")))
                    .and_then(Value::as_str);
                match (id, action) {
                    (Some(id), Some("destroy")) => self.update(|s| s.forget(&id)),
                    (Some(id), _) => self.inspect(socket, &id).await,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Why a call gave nothing.
#[derive(Debug)]
enum Failure {
    /// 404: Docker has no such container.
    NotFound,
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("not found"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

fn is_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container's names from its inspect answer.
fn parse_inspect(v: &Value) -> Option<Names> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(CompactString::from);
    let name = text(v.get("Name"))?;
    let name = name.strip_prefix('/').map(Into::into).unwrap_or(name);
    let config = v.get("Config");
    let labels = config.and_then(|c| c.get("Labels"));
    let label = |key: &str| text(labels.and_then(|l| l.get(key)));
    let network = v.get("NetworkSettings");
    let mut addresses = Vec::new();
    if let Some(Value::Object(nets)) = network.and_then(|n| n.get("Networks")) {
        for net in nets.values().take(16) {
            for key in ["IPAddress", "GlobalIPv6Address"] {
                if let Some(ip) = net
                    .get(key)
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                {
                    addresses.push(ip);
                }
            }
        }
    }
    let mut published = Vec::new();
    if let Some(Value::Object(ports)) = network.and_then(|n| n.get("Ports")) {
        for (spec, bindings) in ports.iter().take(1024) {
            let Some((port, proto)) = spec.split_once('/') else {
                continue;
            };
            let Ok(container_port) = port.parse() else {
                continue;
            };
            for b in bindings.as_array().into_iter().flatten().take(16) {
                let host_port = b
                    .get("HostPort")
                    .and_then(Value::as_str)
                    .and_then(|p| p.parse().ok());
                if let Some(host_port) = host_port {
                    published.push(Published {
                        proto: proto.into(),
                        container_port,
                        host_ip: text(b.get("HostIp")).unwrap_or_default(),
                        host_port,
                    });
                }
            }
        }
    }
    Some(Names {
        name,
        image: text(config.and_then(|c| c.get("Image"))),
        pod_name: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        addresses,
        published,
        pid: v
            .get("State")
            .and_then(|s| s.get("Pid"))
            .and_then(Value::as_u64)
            .filter(|&p| p > 0 && p <= u64::from(u32::MAX))
            .map(|p| p as u32),
    })
}

/// One GET on the Engine API's socket: the response's body (the caller bounds it).
async fn request(socket: &PathBuf, path: &str) -> Result<hyper::body::Incoming, Failure> {
    let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
    let stream = tokio::time::timeout(CALL_TIMEOUT, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| Failure::Other("connecting timed out".into()))?
        .map_err(|e| other(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| other(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| other(&e))?;
    let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| Failure::Other("no answer in time".into()))?
        .map_err(|e| other(&e))?;
    match response.status() {
        s if s.is_success() => Ok(response.into_body()),
        hyper::StatusCode::NOT_FOUND => Err(Failure::NotFound),
        s => Err(Failure::Other(format!("{path}: {s}"))),
    }
}

/// One GET whose whole answer is JSON, at most [`MAX_ANSWER`] bytes, in [`CALL_TIMEOUT`].
async fn get(socket: &PathBuf, path: &str) -> Result<Value, Failure> {
    let body = Limited::new(request(socket, path).await?, MAX_ANSWER);
    let bytes = tokio::time::timeout(CALL_TIMEOUT, body.collect())
        .await
        .map_err(|_| Failure::Other("the answer did not end in time".into()))?
        .map_err(|e| Failure::Other(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Failure::Other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inspect_answer_names_the_container() {
        // The shape Docker Engine 20.10 answers (trimmed).
        let v: Value = serde_json::from_str(
            r#"{"Id":"aef5","Name":"/web1","State":{"Pid":18606},
                "Config":{"Image":"tracer-busybox:test","Labels":{
                    "io.kubernetes.pod.name":"web-5d8f","io.kubernetes.pod.namespace":"shop"}},
                "NetworkSettings":{"Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"18081"},
                                                      {"HostIp":"::","HostPort":"18081"}],
                                            "443/tcp":null},
                   "Networks":{"bridge":{"IPAddress":"198.51.100.2","GlobalIPv6Address":""}}}}"#,
        )
        .unwrap();
        let n = parse_inspect(&v).unwrap();
        assert_eq!(n.name, "web1");
        assert_eq!(n.image.as_deref(), Some("tracer-busybox:test"));
        assert_eq!(n.pod_name.as_deref(), Some("web-5d8f"));
        assert_eq!(n.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(n.pid, Some(18606));
        assert_eq!(
            n.addresses,
            vec!["198.51.100.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(n.published.len(), 2);
        assert_eq!(n.published[0].host_port, 18081);
        assert_eq!(n.published[0].container_port, 80);
        assert_eq!(n.published[0].proto, "tcp");
        // Nothing usable: no names.
        assert_eq!(parse_inspect(&serde_json::json!({"Id": "x"})), None);
    }

    #[test]
    fn remembered_containers_are_bounded() {
        let mut s = State::default();
        for i in 0..MAX_CONTAINERS + 10 {
            s.insert(format!("{i:064x}").into(), Names::default());
        }
        assert_eq!(s.names.len(), MAX_CONTAINERS);
        assert_eq!(s.evicted, 10);
    }
}
