//! The metrics endpoint: `/metrics` (Prometheus text format, counters read from the kernel at
//! each scrape), `/healthz`, and 404 for anything else. hyper on the agent's tokio runtime.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Metrics;
use crate::{
    error::{Error, Result},
    kernel::loader::{KernelCounters, KernelStats},
};

/// What a scrape reads: the registry and the kernel's counters.
pub struct Scrape {
    pub metrics: Metrics,
    pub stats: KernelStats,
    pub counters: Arc<KernelCounters>,
}

impl Scrape {
    pub fn render(&self) -> String {
        self.metrics
            .update_kernel(&self.stats.read(), self.counters.lost());
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
