//! The metrics endpoint: `/metrics` (Prometheus text format, counters read from the kernel at
//! each scrape), `/healthz`, `/nat/who` (questions for the agent, when it watches NAT), and
//! 404 for anything else; GET and HEAD only. hyper runs on a
//! thread and a single-threaded tokio runtime of its own, so neither a scrape nor a flood of
//! connections can stall the thread that drains the ring buffer; what anyone who reaches the
//! port can grow is bounded (`limits`), and the endpoint's own health is served with the rest.
mod limits;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use http_body_util::Full;
use hyper::{
    body::{Body, Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracer_common::SockEvent;

use limits::{Activity, Backoff, Closed, Connections, Health};
pub use limits::{
    Limits, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, CONNECTION_LIFETIME, HEADER_TIMEOUT,
    LISTEN_BACKLOG, MAX_CONNECTIONS, MAX_REQUEST_HEAD_BYTES,
};

use super::Metrics;
use crate::{
    error::{Error, Result},
    model::SocketTable,
};

/// The kernel's own counts, read at each scrape. The metrics side takes plain numbers; the
/// command that loaded the programs says where they come from.
pub trait KernelReadings: Send + Sync {
    /// Event and transition counts, in `tracer_common::stats` layout.
    fn stats(&self) -> Vec<u64>;
    /// Events the kernel could not deliver, by why.
    fn lost(&self) -> crate::model::evicted::LostReasons;
    /// Retransmit, reset and drop counts, keyed as `tracer_common::health::key`.
    fn health(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }
    /// Runs of the health hooks the kernel skipped (nested in themselves).
    fn health_skipped(&self) -> u64 {
        0
    }
}

/// What a scrape reads: the registry, the kernel's counters, and the counts the agent keeps
/// itself (same layout as the kernel's).
pub struct Scrape {
    pub metrics: Metrics,
    kernel: Box<dyn KernelReadings>,
    pub agent_stats: Vec<AtomicU64>,
    /// Retransmits, resets and drops the agent attributed to a followed process itself
    /// (keyed as `tracer_common::health::key`: a few thousand keys at most).
    agent_health: Mutex<std::collections::BTreeMap<u32, u64>>,
    /// The endpoint's own counters (connections, accept errors).
    health: Arc<Health>,
    /// Held while a scrape reads the registry and while the agent rewrites the socket-table
    /// gauges (reset, then refilled), so a scrape never sees them half-written. Each side
    /// holds it for one pass over a bounded set of series.
    gauges: Mutex<()>,
}

impl Scrape {
    pub fn new(metrics: Metrics, kernel: Box<dyn KernelReadings>) -> Self {
        Scrape {
            metrics,
            kernel,
            agent_stats: (0..tracer_common::stats::COUNT)
                .map(|_| AtomicU64::new(0))
                .collect(),
            agent_health: Mutex::default(),
            health: Arc::new(Health::new()),
            gauges: Mutex::new(()),
        }
    }

    /// Counts a TCP transition, or a socket hook's event from softirq (a connection completed
    /// for a listener), that the agent attributed to a followed process (the kernel counts
    /// those itself only when no process filter is active).
    pub fn count_state(&self, ev: &SockEvent) {
        use tracer_common::{stats, tcp_state};
        let bump = |i: u32| {
            if let Some(c) = self.agent_stats.get(i as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        bump(stats::event_index(ev.kind, ev.protocol, ev.family));
        if ev.kind != tracer_common::kind::STATE {
            return;
        }
        bump(stats::TRANSITIONS + u32::from(ev.old_state & 15) * 16 + u32::from(ev.new_state & 15));
        if ev.old_state == tcp_state::SYN_SENT && ev.new_state == tcp_state::CLOSE && ev.sk_err > 0
        {
            bump(stats::CONNECT_ERRNOS + stats::errno_slot(-i64::from(ev.sk_err)));
        }
    }

    /// Counts a connect's or an accept-queue wait's latency the agent measured for a
    /// followed process (the kernel counts those itself only without a process filter).
    pub fn count_latency(&self, latency: &crate::model::table::Latency, ev: &SockEvent) {
        use tracer_common::{stats, tcp_state};
        let family = stats::family_slot(ev.family);
        let bump = |i: u32| {
            if let Some(c) = self.agent_stats.get(i as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Some(ns) = latency.connect_ns {
            let result = u32::from(ev.new_state != tcp_state::ESTABLISHED);
            bump(
                stats::CONNECT_SECONDS
                    + (result * stats::FAMILIES + family) * stats::LATENCY_BUCKETS
                    + stats::latency_bucket(ns),
            );
        }
        if let Some(ns) = latency.accept_wait_ns {
            bump(
                stats::ACCEPT_WAIT_SECONDS
                    + family * stats::LATENCY_BUCKETS
                    + stats::latency_bucket(ns),
            );
        }
    }

    /// Counts a retransmit, reset or drop the agent attributed to a followed process (the
    /// kernel counts those itself only when no process filter is active).
    pub fn count_health(&self, ev: &SockEvent) {
        use tracer_common::{health, kind, stats};
        let family = stats::family_slot(ev.family) as u8;
        let key = match ev.kind {
            kind::RETRANSMIT => health::key(
                health::RETRANSMIT,
                ev.new_state,
                u8::from(ev.arg == 1),
                family,
            ),
            kind::RESET => health::key(health::RESET, u8::from(ev.ret == 1), ev.new_state, family),
            kind::DROP => health::key(
                health::DROP,
                ev.arg.clamp(0, 255) as u8,
                stats::proto_slot(ev.protocol) as u8,
                family,
            ),
            _ => return,
        };
        let mut counts = self
            .agent_health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *counts.entry(key).or_default() += 1;
    }

    /// A reading of the listen queues: the refused connections counted, the queue gauges
    /// refreshed from the table (which took the reading).
    pub fn listen_queues(
        &self,
        overflows: &[crate::model::listen::ListenOverflow],
        table: &SocketTable,
        container_of: &dyn Fn(u64) -> String,
    ) {
        self.metrics.count_overflows(overflows);
        self.update_table(table, container_of);
    }

    /// Sets the socket-table gauges (from the draining thread), never while a scrape reads
    /// them. `container_of`: an owner's cgroup → its container's label.
    pub fn update_table(&self, table: &SocketTable, container_of: &dyn Fn(u64) -> String) {
        let _gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        self.metrics.update_table(table, container_of);
    }

    /// Sets the NAT gauges rebuilt from scratch each time (conntrack tables, port pools),
    /// never while a scrape reads them.
    pub fn update_nat_gauges<'a>(
        &self,
        health: impl Iterator<Item = &'a crate::model::nat::health::CtHealth>,
        pools: &[crate::model::nat::pool::PoolReport],
        rest_in_use: usize,
    ) {
        let _gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        self.metrics.update_conntrack(health);
        self.metrics.update_nat_pools(pools, rest_in_use);
    }

    /// Runs on the endpoint's one thread only: raising the kernel counters (read, compare,
    /// add) is then never done by two scrapes at once.
    pub fn render(&self) -> String {
        let mut totals = self.kernel.stats();
        for (total, agent) in totals.iter_mut().zip(&self.agent_stats) {
            *total += agent.load(Ordering::Relaxed);
        }
        self.metrics.update_kernel(&totals, &self.kernel.lost());
        let mut health = self.kernel.health();
        {
            let agent = self
                .agent_health
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            health.extend(agent.iter().map(|(k, v)| (*k, *v)));
        }
        // A key both counted may appear twice: summed.
        health.sort_unstable();
        health.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 += next.1;
            }
            same
        });
        self.metrics
            .update_health(&health, self.kernel.health_skipped());
        let mut text = {
            let _gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
            self.metrics.render()
        };
        text.push_str(&self.health.render());
        text
    }
}

/// Binds the endpoint (before anything is attached, so a busy port fails fast and clearly).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let err = |source| Error::MetricsListen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    // std listens with a backlog of 128; listen() again on a listening socket only changes
    // its backlog. Should it fail, the smaller queue still works.
    // SAFETY: listen(2) on a socket this function owns; no memory is passed.
    unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Serves on a thread of its own (`tracer-metrics`), until the process exits. That thread
/// parses what anyone who reaches the port sends: it first drops the same capabilities the
/// agent drops once attached (capabilities belong to each thread, not to the process).
///
/// `drop_privileges` runs first on that thread (the caller passes the kernel's).
pub fn spawn(
    listener: std::net::TcpListener,
    scrape: Arc<Scrape>,
    ask: Option<Ask>,
    drop_privileges: fn(),
) -> Result<()> {
    let health = scrape.health.clone();
    let render: Render = Arc::new(move || scrape.render());
    let routes = Routes { render, ask };
    start(listener, Limits::default(), health, routes, drop_privileges)
        .map_err(|e| Error::io("starting the metrics endpoint", e))
}

/// What `/metrics` serves.
type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// An answer the agent's loop gives: status, content type and body.
pub type Answer = (u16, &'static str, String);

/// Asks the agent's loop a question (`GET /nat/who`) from the request's query string.
pub type Ask = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>
        + Send
        + Sync,
>;

/// Questions take the agent's loop away from the ring: one at a time, and at most this often
/// whoever asks (a flood of them costs the loop a bounded share).
pub const ASK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What the endpoint serves besides its own health.
#[derive(Clone)]
pub struct Routes {
    pub render: Render,
    pub ask: Option<Ask>,
}

/// Starts the endpoint's thread and runtime, and returns once it accepts (or could not start).
fn start(
    listener: std::net::TcpListener,
    limits: Limits,
    health: Arc<Health>,
    routes: Routes,
    before_serving: fn(),
) -> io::Result<()> {
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tracer-metrics".into())
        .spawn(move || {
            before_serving();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let listener = runtime.and_then(|runtime| {
                let listener = {
                    let _context = runtime.enter();
                    TcpListener::from_std(listener)
                }?;
                Ok((runtime, listener))
            });
            match listener {
                Ok((runtime, listener)) => {
                    let _ = ready.send(Ok(()));
                    runtime.block_on(serve(listener, limits, health, routes));
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
    started
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the metrics thread ended at start")))
}

/// The accept loop: every connection is counted and, at the cap, makes room for itself;
/// failed accepts are counted, and those that say the process is out of descriptors or
/// memory pause the loop instead of retrying in a spin.
async fn serve(listener: TcpListener, limits: Limits, health: Arc<Health>, routes: Routes) {
    let asking = Arc::new(tokio::sync::Semaphore::new(1));
    let connections = Arc::new(Connections::new(limits.max_connections, health.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_request_head_bytes);
    let mut backoff = Backoff::default();
    let mut key = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                health.accept_error(&e);
                if let Some(pause) = backoff.after(&e) {
                    // Logged once per streak of failures, not once per pause.
                    if pause == ACCEPT_BACKOFF_MIN {
                        tracing::warn!("metrics endpoint: accept failed ({e}); pausing accepts");
                    }
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        health.accepted();
        if connections.make_room() {
            // Let the runtime drop the evicted connection (and close its socket) before the
            // next accept: tracer's descriptors stay at the cap, even in a burst.
            tokio::task::yield_now().await;
        }
        key += 1;
        let activity = connections.activity();
        let slot = SlotGuard {
            connections: connections.clone(),
            key,
        };
        let task = tokio::spawn(connection(
            stream,
            http.clone(),
            limits,
            Served {
                routes: routes.clone(),
                asking: asking.clone(),
                activity: activity.clone(),
                health: health.clone(),
                _slot: slot,
            },
        ));
        connections.insert(key, &activity, task.abort_handle());
    }
}

/// Leaves the connection table when its connection's task ends, however it ends (an abort
/// by the cap drops the task's future, and this with it).
struct SlotGuard {
    connections: Arc<Connections>,
    key: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.connections.remove(self.key);
    }
}

/// What one connection's task holds besides its socket.
struct Served {
    routes: Routes,
    /// One question at a time ([`ASK_INTERVAL`]).
    asking: Arc<tokio::sync::Semaphore>,
    activity: Activity,
    health: Arc<Health>,
    _slot: SlotGuard,
}

/// Serves one connection for at most the connection lifetime, and counts why tracer closed
/// it when it did.
async fn connection(stream: TcpStream, http: http1::Builder, limits: Limits, served: Served) {
    let (routes, activity) = (served.routes.clone(), served.activity.clone());
    let asking = served.asking.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        activity.touch();
        let ready = respond(&req, &routes);
        let question = match (&ready, &routes.ask) {
            (None, Some(ask)) => Some((ask.clone(), req.uri().query().unwrap_or("").to_string())),
            _ => None,
        };
        let asking = asking.clone();
        async move {
            let answer = match (ready, question) {
                (Some(r), _) => r,
                (None, Some((ask, query))) => {
                    // Closed only if the runtime is going away: nothing to answer then.
                    let Ok(_turn) = asking.acquire().await else {
                        return Ok(reply_text(503, "shutting down\n"));
                    };
                    let (status, content_type, body) = ask(query).await;
                    tokio::time::sleep(ASK_INTERVAL).await;
                    reply(status, content_type, body)
                }
                (None, None) => reply_text(404, "not found\n"),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let closed = match tokio::time::timeout(limits.lifetime, conn).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) if e.is_timeout() => Some(Closed::Timeout),
        Ok(Err(e)) if e.is_parse() => Some(Closed::BadRequest),
        Ok(Err(e)) => {
            tracing::debug!("metrics connection: {e}");
            None
        }
        Err(_) => Some(Closed::Lifetime),
    };
    if let Some(why) = closed {
        served.health.closed(why);
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn reply_text(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", body)
}

/// The answer to a request, or None for a question to ask the agent (`/nat/who`, when there
/// is an agent to ask).
fn respond(req: &Request<Incoming>, routes: &Routes) -> Option<Response<Full<Bytes>>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = reply_text(405, "only GET and HEAD\n");
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Some(r);
    }
    // A body is never read: one that was announced ends the connection after this answer.
    if !req.body().is_end_stream() {
        return Some(reply_text(413, "no request body accepted\n"));
    }
    Some(match req.uri().path() {
        "/metrics" => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            (routes.render)(),
        ),
        "/healthz" => reply_text(200, "ok\n"),
        "/nat/who" if routes.ask.is_some() => return None,
        "/" => reply(
            200,
            "text/html",
            "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n",
        ),
        _ => reply_text(404, "not found\n"),
    })
}

#[cfg(test)]
mod tests;
