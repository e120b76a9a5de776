//! The bounds of the metrics endpoint, which anyone who can reach its port can push on: how
//! many connections stay open (and which one goes when a new one comes at the cap), how long a
//! client may take, how long the accept loop pauses when the process runs out of descriptors
//! or memory, and the endpoint's own health counters.
use std::{
    collections::HashMap,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::task::AbortHandle;

/// At most this many connections are open at once. A new connection at the cap closes the
/// least recently active one (the one whose last request, or whose accept if it never sent
/// one, is oldest), so connections held idle or half-sent cannot keep a scraper out.
pub const MAX_CONNECTIONS: usize = 64;

/// A client must send a whole request head within this time, on a new connection and again
/// between requests on a kept-alive one (hyper restarts the timer when a connection goes
/// idle): it is the header-read timeout and the idle timeout in one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// No connection stays open longer than this, whatever it does (a client that reads its
/// response slowly, or keeps asking).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) read, in bytes; hyper answers 431 beyond
/// it. 8 KiB is the smallest buffer hyper accepts; a scraper's request is a few hundred bytes.
/// No request body is accepted at all.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8192;

/// The listening socket's accept queue: a burst of connections beyond it would have the kernel
/// drop SYNs (and the client retry a second later) until the loop catches up.
pub const LISTEN_BACKLOG: i32 = 1024;

/// First pause of the accept loop after it ran out of descriptors or memory …
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// … doubling up to this while the failures go on.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Consecutive failed accepts of other kinds (a client gone before it was accepted, a
/// firewall's EPERM) after which the loop pauses as well, so no error can make it spin.
const TRANSIENT_ERRORS_BEFORE_PAUSE: u32 = 64;

/// The endpoint's bounds (the constants above; tests use smaller ones).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
    pub max_request_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
            max_request_head_bytes: MAX_REQUEST_HEAD_BYTES,
        }
    }
}

/// Errors that say the process (or the system) is out of descriptors, buffers or memory:
/// retrying at once would fail again and spin.
fn exhausted(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// When the accept loop pauses after a failed accept, and for how long.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Option<Duration>,
    transient: u32,
}

impl Backoff {
    /// The pause after this failure (None: try again at once).
    pub fn after(&mut self, err: &io::Error) -> Option<Duration> {
        if !exhausted(err) {
            self.transient += 1;
            if self.transient < TRANSIENT_ERRORS_BEFORE_PAUSE {
                return None;
            }
        }
        let pause = self.next.unwrap_or(ACCEPT_BACKOFF_MIN);
        self.next = Some((pause * 2).min(ACCEPT_BACKOFF_MAX));
        Some(pause)
    }

    /// An accept succeeded: the next failure starts from the shortest pause again.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The accept errors counted by name; the rest count as `other`.
const ACCEPT_ERRNOS: [(i32, &str); 4] = [
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::ENOMEM, "ENOMEM"),
];

/// Why tracer closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The least recently active, to make room for a new connection at the cap.
    Cap,
    /// No whole request head within the header timeout (new or kept-alive connection).
    Timeout,
    /// Open for longer than the connection lifetime.
    Lifetime,
    /// A request hyper could not parse, or a head over the size limit.
    BadRequest,
}

impl Closed {
    const ALL: [Closed; 4] = [
        Closed::Cap,
        Closed::Timeout,
        Closed::Lifetime,
        Closed::BadRequest,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Closed::Cap => "cap",
            Closed::Timeout => "timeout",
            Closed::Lifetime => "lifetime",
            Closed::BadRequest => "bad_request",
        }
    }
}

/// The endpoint's own health, in a registry of its own that is rendered after the main one.
pub struct Health {
    registry: Registry,
    accepted: IntCounter,
    open: IntGauge,
    closed: IntCounterVec,
    accept_errors: IntCounterVec,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        let registry = Registry::new();
        let accepted = IntCounter::new(
            "tracer_metrics_connections_accepted_total",
            "Connections the metrics endpoint accepted.",
        )
        .expect("valid metric");
        let open = IntGauge::new(
            "tracer_metrics_connections_open",
            "Connections to the metrics endpoint open now (at most the connection cap).",
        )
        .expect("valid metric");
        let closed = IntCounterVec::new(
            Opts::new(
                "tracer_metrics_connections_closed_total",
                "Connections the metrics endpoint closed itself, by reason: cap (the least recently active, to make room for a new one), timeout (no whole request head in time, new or idle), lifetime (open too long), bad_request (unparsable or oversized request head).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "tracer_metrics_accept_errors_total",
                "Failed accepts on the metrics port, by errno (EMFILE, ENFILE, ENOBUFS and ENOMEM pause the accept loop).",
            ),
            &["errno"],
        )
        .expect("valid metric");
        for c in [
            Box::new(accepted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(open.clone()),
            Box::new(closed.clone()),
            Box::new(accept_errors.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        // Every series exists from the start, at 0: an alert on its rate needs no absent().
        for reason in Closed::ALL {
            closed.with_label_values(&[reason.as_str()]);
        }
        for (_, name) in ACCEPT_ERRNOS.iter().chain(&[(0, "other")]) {
            accept_errors.with_label_values(&[name]);
        }
        Health {
            registry,
            accepted,
            open,
            closed,
            accept_errors,
        }
    }

    pub fn accepted(&self) {
        self.accepted.inc();
    }

    pub fn closed(&self, why: Closed) {
        self.closed.with_label_values(&[why.as_str()]).inc();
    }

    pub fn accept_error(&self, err: &io::Error) {
        let name = ACCEPT_ERRNOS
            .iter()
            .find(|(errno, _)| err.raw_os_error() == Some(*errno))
            .map_or("other", |(_, name)| name);
        self.accept_errors.with_label_values(&[name]).inc();
    }

    fn set_open(&self, n: usize) {
        self.open.set(n as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}

/// One open connection.
struct Slot {
    /// When it was accepted or last began a request (time since `Connections::epoch`, ns).
    last_active: Arc<AtomicU64>,
    abort: AbortHandle,
}

/// The open connections, so that the cap can close the least recently active one.
pub struct Connections {
    cap: usize,
    epoch: Instant,
    slots: Mutex<HashMap<u64, Slot>>,
    health: Arc<Health>,
}

/// Marks a connection active (it began a request).
#[derive(Clone)]
pub struct Activity {
    epoch: Instant,
    last_active: Arc<AtomicU64>,
}

impl Activity {
    pub fn touch(&self) {
        self.last_active
            .store(nanos_since(self.epoch), Ordering::Relaxed);
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The key of the slot whose last activity is oldest (the lower key on a tie: the older
/// connection).
fn least_recently_active(slots: impl Iterator<Item = (u64, u64)>) -> Option<u64> {
    slots
        .min_by_key(|&(key, last)| (last, key))
        .map(|(key, _)| key)
}

impl Connections {
    pub fn new(cap: usize, health: Arc<Health>) -> Self {
        Connections {
            cap: cap.max(1),
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            health,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for one more connection: at the cap, the least recently active one is
    /// closed (its task aborted, which drops its socket when the runtime next runs it).
    /// Whether one was.
    pub fn make_room(&self) -> bool {
        let mut slots = self.slots();
        let mut evicted = false;
        while slots.len() >= self.cap {
            let oldest = least_recently_active(
                slots
                    .iter()
                    .map(|(&key, s)| (key, s.last_active.load(Ordering::Relaxed))),
            );
            let Some(slot) = oldest.and_then(|key| slots.remove(&key)) else {
                break;
            };
            slot.abort.abort();
            self.health.closed(Closed::Cap);
            evicted = true;
        }
        self.health.set_open(slots.len());
        evicted
    }

    /// A new connection's activity marker, to be handed to `insert` with its task.
    pub fn activity(&self) -> Activity {
        Activity {
            epoch: self.epoch,
            last_active: Arc::new(AtomicU64::new(nanos_since(self.epoch))),
        }
    }

    /// Records a connection's task under `key`.
    pub fn insert(&self, key: u64, activity: &Activity, abort: AbortHandle) {
        let mut slots = self.slots();
        slots.insert(
            key,
            Slot {
                last_active: activity.last_active.clone(),
                abort,
            },
        );
        self.health.set_open(slots.len());
    }

    /// The connection's task ended (or was aborted).
    pub fn remove(&self, key: u64) {
        let mut slots = self.slots();
        slots.remove(&key);
        self.health.set_open(slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn exhaustion_backs_off_doubling_to_a_second() {
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..6).map(|_| b.after(&err(libc::EMFILE))).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            pauses,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        for errno in [libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(b.after(&err(errno)), ms(1000));
        }
        b.reset();
        assert_eq!(b.after(&err(libc::ENFILE)), ms(100));
    }

    #[test]
    fn transient_errors_retry_at_once_but_never_spin() {
        let mut b = Backoff::default();
        for _ in 1..TRANSIENT_ERRORS_BEFORE_PAUSE {
            assert_eq!(b.after(&err(libc::ECONNABORTED)), None);
        }
        assert_eq!(b.after(&err(libc::EPERM)), Some(ACCEPT_BACKOFF_MIN));
        b.reset();
        assert_eq!(b.after(&err(libc::ECONNABORTED)), None);
    }

    #[test]
    fn the_least_recently_active_goes_first() {
        assert_eq!(
            least_recently_active([(1, 30), (2, 10), (3, 20)].into_iter()),
            Some(2)
        );
        // A tie: the older connection.
        assert_eq!(least_recently_active([(7, 5), (3, 5)].into_iter()), Some(3));
        assert_eq!(least_recently_active(std::iter::empty()), None);
    }

    #[test]
    fn health_series_exist_from_the_start() {
        let h = Health::new();
        h.accept_error(&err(libc::EMFILE));
        h.accept_error(&err(libc::ECONNABORTED));
        h.closed(Closed::Timeout);
        let text = h.render();
        assert!(text.contains("tracer_metrics_accept_errors_total{errno=\"EMFILE\"} 1"));
        assert!(text.contains("tracer_metrics_accept_errors_total{errno=\"other\"} 1"));
        assert!(text.contains("tracer_metrics_accept_errors_total{errno=\"ENFILE\"} 0"));
        assert!(text.contains("tracer_metrics_connections_closed_total{reason=\"timeout\"} 1"));
        assert!(text.contains("tracer_metrics_connections_closed_total{reason=\"cap\"} 0"));
        assert!(text.contains("tracer_metrics_connections_open 0"));
    }
}
