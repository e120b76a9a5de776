//! The metrics endpoint: `/metrics` (Prometheus text format, counters read from the kernel at
//! each scrape), `/healthz`, and 404 for anything else. hyper on the agent's tokio runtime.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracer_common::SockEvent;

use super::Metrics;
use crate::{
    error::{Error, Result},
    kernel::loader::{KernelCounters, KernelStats},
};

/// What a scrape reads: the registry, the kernel's counters, and the counts the agent keeps
/// itself (same layout as the kernel's).
pub struct Scrape {
    pub metrics: Metrics,
    pub stats: KernelStats,
    pub counters: Arc<KernelCounters>,
    pub agent_stats: Vec<AtomicU64>,
}

impl Scrape {
    pub fn new(metrics: Metrics, stats: KernelStats, counters: Arc<KernelCounters>) -> Self {
        Scrape {
            metrics,
            stats,
            counters,
            agent_stats: (0..tracer_common::stats::COUNT)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Counts a TCP transition the agent attributed to a followed process (the kernel counts
    /// transitions itself only when no process filter is active).
    pub fn count_state(&self, ev: &SockEvent) {
        use tracer_common::{stats, tcp_state};
        let bump = |i: u32| {
            if let Some(c) = self.agent_stats.get(i as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        bump(stats::event_index(ev.kind, ev.protocol, ev.family));
        bump(stats::TRANSITIONS + u32::from(ev.old_state & 15) * 16 + u32::from(ev.new_state & 15));
        if ev.old_state == tcp_state::SYN_SENT && ev.new_state == tcp_state::CLOSE && ev.sk_err > 0
        {
            bump(stats::CONNECT_ERRNOS + stats::errno_slot(-i64::from(ev.sk_err)));
        }
    }

    pub fn render(&self) -> String {
        let mut totals = self.stats.read();
        for (total, agent) in totals.iter_mut().zip(&self.agent_stats) {
            *total += agent.load(Ordering::Relaxed);
        }
        self.metrics.update_kernel(&totals, self.counters.lost());
        self.metrics.render()
    }
}

/// Binds the endpoint (before anything is attached, so a busy port fails fast and clearly).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsListen { addr, source })
}

/// Serves until the runtime stops.
pub fn spawn(listener: TcpListener, scrape: Arc<Scrape>) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let scrape = scrape.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &scrape)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("metrics connection: {e}");
                }
            });
        }
    });
}

fn respond(req: &Request<hyper::body::Incoming>, scrape: &Scrape) -> Response<Full<Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape.render(),
        ),
        (&Method::GET, "/healthz") => reply(200, "text/plain", "ok\n".into()),
        (&Method::GET, "/") => reply(
            200,
            "text/html",
            "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n".into(),
        ),
        _ => reply(404, "text/plain", "not found\n".into()),
    }
}
