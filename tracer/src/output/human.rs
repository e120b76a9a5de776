//! The human table: one line per event under a header, in BCC's column conventions
//! (`PID COMM … LADDR LPORT RADDR RPORT`), with a DETAIL column that says what the kernel did.
use std::fmt::Write as _;
use std::io::{self, Write};

use super::{ports as text, services, Sink, SnapshotInfo, Summary};
use crate::model::{ephemeral::Usage, ports::RemoteGroup, types::PortNames, Event};

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

pub struct HumanSink<W: Write, E: Write> {
    out: W,
    /// Where status lines (lost events, summary) go: stderr, so stdout stays a clean table.
    status: E,
    color: bool,
    line: String,
    /// Events are printed (not only summaries): print the column header.
    header: bool,
    /// Names the ports' services where a port's class is shown.
    names: PortNames,
}

impl<W: Write, E: Write> HumanSink<W, E> {
    pub fn new(out: W, status: E, color: bool) -> Self {
        HumanSink {
            out,
            status,
            color,
            line: String::with_capacity(256),
            header: true,
            names: services::system,
        }
    }

    /// Service names from `names` instead of the system's database (tests: a fixed table).
    pub fn with_names(mut self, names: PortNames) -> Self {
        self.names = names;
        self
    }

    /// The table and the status lines written so far.
    pub fn into_parts(self) -> (W, E) {
        (self.out, self.status)
    }

    /// For summaries only (`--group-by`): no event header.
    pub fn without_header(mut self) -> Self {
        self.header = false;
        self
    }

    fn paint(&self, color: &'static str) -> (&'static str, &'static str) {
        if self.color {
            (color, RESET)
        } else {
            ("", "")
        }
    }
}

pub const HEADER: &str = "TIME            PID     COMM            CONTAINER    EVENT      PROTO LADDR           LPORT RADDR           RPORT DETAIL";

/// Local time of day with microseconds.
pub(crate) fn time_of_day(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as libc::time_t;
    let micros = (ts_ns % 1_000_000_000) / 1000;
    // SAFETY: localtime_r writes into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec, micros
    )
}

/// A duration as a person reads it: `850 µs`, `12.3 ms`, `1.02 s`.
pub fn seconds(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// What the DETAIL column says about an event; `names` names a port whose class it shows.
pub fn detail(e: &Event, names: PortNames) -> String {
    let mut d = String::new();
    if let Some(fd) = e.fd {
        if fd >= 0 {
            let _ = write!(d, "fd={fd} ");
        }
    }
    use crate::model::types::{EventKind as K, TcpState};
    match e.event {
        K::Listen => {
            let _ = write!(d, "backlog={} ", e.backlog.unwrap_or(0));
        }
        K::Shutdown => {
            let _ = write!(d, "{} ", e.how.unwrap_or("?"));
        }
        K::State => {
            let _ = write!(
                d,
                "{} -> {} ",
                e.old_state.map_or("?", TcpState::name),
                e.state.map_or("?", TcpState::name)
            );
            let never_sent = e.old_state == Some(TcpState::SynSent)
                && e.state == Some(TcpState::Close)
                && e.lport == 0
                && e.errno.is_none();
            if let Some(ns) = e.connect_ns {
                let verb = if e.state == Some(TcpState::Established) {
                    "connected"
                } else {
                    "gave up"
                };
                let _ = write!(d, "{verb} after {} ", seconds(ns));
                match e.syn_retransmits {
                    Some(0) | None => {}
                    Some(1) => d.push_str("(1 SYN retransmit) "),
                    Some(n) => {
                        let _ = write!(d, "({n} SYN retransmits) ");
                    }
                }
            }
            if let Some(ns) = e.handshake_ns {
                let _ = write!(d, "SYN-ACK answered after {} ", seconds(ns));
            }
            // A connect that failed lived as long as it tried: said once.
            if let Some(ns) = e.lifetime_ns.filter(|_| e.connect_ns.is_none()) {
                let _ = write!(d, "lived {} ", seconds(ns));
            }
            if never_sent {
                // What the socket path sees of a connect the kernel could give no port
                // (EADDRNOTAVAIL on the syscall path).
                d.push_str("ended before its SYN: no local port assigned ");
            }
        }
        K::Retransmit => {
            let what = match e.retransmit {
                Some("syn") => "SYN",
                Some("synack") => "SYN-ACK",
                _ => "data",
            };
            let _ = write!(d, "{what} sent again ");
            if let (Some(state), "data") = (e.state, what) {
                let _ = write!(d, "in {state} ");
            }
        }
        K::Reset => {
            let _ = write!(d, "RST {} ", e.reset.unwrap_or("?"));
            if let Some(state) = e.state {
                let _ = write!(d, "in {state} ");
            }
            if let Some(reason) = &e.reason {
                let _ = write!(d, "({reason}) ");
            }
        }
        K::Drop => {
            let _ = write!(d, "packet dropped: {} ", e.reason.as_deref().unwrap_or("?"));
        }
        K::Sendto | K::Recvfrom | K::Sendmsg | K::Recvmsg if e.errno.is_none() => {
            if let Some(bytes) = e.bytes {
                let _ = write!(d, "{bytes} B ");
            }
        }
        _ => {}
    }
    if e.lport_kernel_chosen
        && e.lport != 0
        && matches!(e.event, K::Bind | K::Connect | K::Sendto | K::Sendmsg)
    {
        d.push_str("port chosen by kernel");
        if let Some((lo, hi)) = e.ephemeral_range {
            let _ = write!(d, " (ephemeral {lo}-{hi}, IANA {}", e.lport_class);
            if let Some(service) = names(e.lport, e.proto) {
                // From a file: escaped like every other name.
                let _ = write!(d, ", service {}", crate::text::escape(service));
            }
            d.push(')');
        }
        d.push(' ');
    }
    // The state a call left the socket in, where the call moves it (a fresh or bound socket
    // is always CLOSE, which says nothing).
    if matches!(e.event, K::Listen | K::Accept | K::Connect | K::Shutdown) {
        if let Some(state) = e.state {
            let _ = write!(d, "{state} ");
        }
    }
    if let Some(ns) = e.accept_wait_ns {
        let _ = write!(d, "waited {} in the accept queue ", seconds(ns));
    }
    if e.event == K::Release {
        d.push_str("socket freed (last reference gone) ");
    }
    if let Some(errno) = &e.errno {
        d.push_str(errno);
        d.push(' ');
    }
    if e.bad_sockaddr {
        d.push_str("bad sockaddr ");
    }
    d.truncate(d.trim_end().len());
    d
}

impl<W: Write, E: Write> Sink for HumanSink<W, E> {
    fn ready(&mut self, hooks: &[String]) -> io::Result<()> {
        use crate::model::types::KernelPath;
        let path = match KernelPath::of_hooks(hooks) {
            Some(KernelPath::Sockets) => {
                " on the socket path (--syscalls adds fds, return values and close)"
            }
            Some(KernelPath::Syscalls) => " on the syscall path",
            None => "",
        };
        writeln!(
            self.status,
            "tracer: attached {} hooks{path}; watching sockets (Ctrl-C to stop)",
            hooks.len()
        )?;
        if self.header {
            writeln!(self.out, "{HEADER}")?;
        }
        self.out.flush()
    }

    fn event(&mut self, e: &Event) -> io::Result<()> {
        let (c0, c1) = if e.errno.is_some() {
            self.paint(RED)
        } else if e.event == crate::model::types::EventKind::State {
            self.paint(
                if e.state == Some(crate::model::types::TcpState::Established) {
                    GREEN
                } else {
                    YELLOW
                },
            )
        } else if e.lport_kernel_chosen {
            self.paint(CYAN)
        } else {
            ("", "")
        };
        let pid = e.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        // Any user names their process: escaped, and cut by display cells, not bytes.
        let comm = crate::text::pad(e.comm_or_dash(), 15);
        // A container's name is its runtime's user's choice: escaped and cut the same way.
        let container = crate::text::pad(&container_label(e.container.as_deref()), 12);
        self.line.clear();
        let _ = write!(
            self.line,
            "{:<15} {:<7} {comm} {container} {:<10} {:<5} {:<15} {:<5} {:<15} {:<5} {c0}{}{c1}",
            time_of_day(e.ts_ns),
            pid,
            e.event,
            e.proto,
            e.laddr,
            e.lport,
            e.raddr,
            e.rport,
            detail(e, self.names),
        );
        self.out.write_all(self.line.as_bytes())?;
        self.out.write_all(b"\n")
    }

    fn lost(&mut self, new: u64, total: u64) -> io::Result<()> {
        let (c0, c1) = self.paint(RED);
        writeln!(
            self.status,
            "{c0}tracer: {new} events lost (ring buffer full, or ownerless resets and drops over their rate; {total} so far){c1}"
        )
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.out.flush()?;
        writeln!(
            self.status,
            "tracer: {} events in {:.1}s, {} lost",
            s.events, s.seconds, s.lost
        )?;
        if s.proxies_ambiguous > 0 {
            writeln!(
                self.status,
                "tracer: {} proxied connections not joined to their client (several clients waited on the proxy at once)",
                s.proxies_ambiguous
            )?;
        }
        if s.health_skipped > 0 {
            writeln!(
                self.status,
                "tracer: {} runs of the retransmit/reset/drop hooks skipped by the kernel (nested in themselves): some of those may be missing",
                s.health_skipped
            )?;
        }
        match s.evicted.describe() {
            Some(tables) => writeln!(
                self.status,
                "tracer: evicted to stay within bounds: {tables}"
            ),
            None => Ok(()),
        }
    }

    fn snapshot(&mut self, s: &SnapshotInfo) -> io::Result<()> {
        writeln!(
            self.status,
            "tracer: {} sockets already open in {} network namespace{} ({} processes), snapshot took {:.1} ms",
            s.sockets,
            s.namespaces,
            if s.namespaces == 1 { "" } else { "s" },
            s.processes,
            s.took_ms
        )
    }

    fn ephemeral_warning(&mut self, u: &Usage) -> io::Result<()> {
        let (c0, c1) = self.paint(RED);
        self.out.flush()?;
        writeln!(
            self.status,
            "{c0}tracer: ephemeral ports near exhaustion in netns {}: {} (range {}-{}){c1}",
            u.netns,
            text::usage_line(u),
            u.range.0,
            u.range.1
        )
    }

    fn ephemeral_report(&mut self, usage: &[Usage]) -> io::Result<()> {
        // The fullest first; the rest in one line (`--json` has every record).
        const SHOWN: usize = 20;
        for u in usage.iter().take(SHOWN) {
            writeln!(
                self.status,
                "tracer: ephemeral ports, netns {} range {}-{}: {}",
                u.netns,
                u.range.0,
                u.range.1,
                text::usage_line(u)
            )?;
        }
        if usage.len() > SHOWN {
            writeln!(
                self.status,
                "tracer: ephemeral ports: {} more scopes, none fuller",
                usage.len() - SHOWN
            )?;
        }
        Ok(())
    }

    fn remote_groups(&mut self, groups: &[RemoteGroup], last: bool) -> io::Result<()> {
        writeln!(
            self.out,
            "--- connections by remote endpoint ({}) ---",
            if last { "final" } else { "so far" }
        )?;
        text::write_groups(&mut self.out, groups, self.names)?;
        self.out.flush()
    }

    fn nat(&mut self, item: &crate::model::nat::NatOutput) -> io::Result<()> {
        if let crate::model::nat::NatOutput::Pool(p, warning) = item {
            let (on, off) = self.paint(if *warning { RED } else { CYAN });
            self.out.flush()?;
            return writeln!(self.status, "{on}tracer: {}{off}", super::nat::pool_line(p));
        }
        if let crate::model::nat::NatOutput::Health(h) = item {
            // A status line, beside the records.
            let (on, off) = self.paint(if h.near_full() { RED } else { CYAN });
            self.out.flush()?;
            return writeln!(
                self.status,
                "{on}tracer: {}{off}",
                super::nat::health_line(h)
            );
        }
        let (on, off) = self.paint(match item {
            crate::model::nat::NatOutput::Flow(_) => GREEN,
            _ => CYAN,
        });
        let text = super::nat::line(item, time_of_day, self.names);
        writeln!(self.out, "{on}{text}{off}")
    }

    fn netns_gone(&mut self, name: &str, inode: u32) -> io::Result<()> {
        let (on, off) = self.paint(YELLOW);
        let name = crate::text::escape(name);
        writeln!(
            self.status,
            "{on}tracer: network namespace {name} (inode {inode}) is gone: its NAT hooks were dropped; still watching the others{off}"
        )
    }

    fn listen_overflow(&mut self, o: &crate::model::listen::ListenOverflow) -> io::Result<()> {
        let (on, off) = self.paint(RED);
        self.out.flush()?;
        writeln!(
            self.status,
            "{on}tracer: {}{off}",
            crate::text::escape(&text::overflow_line(o))
        )
    }

    fn proxied(&mut self, p: &crate::model::proxy::Proxied) -> io::Result<()> {
        let (on, off) = self.paint(GREEN);
        let comm = crate::text::pad(p.proxy_comm.as_deref().unwrap_or("-"), 15);
        // The proxy runs on the host; the container is the target's.
        let host = crate::text::pad("host", 12);
        let detail = format!(
            "{} → {} carried on as {} → {} in container {}",
            p.client, p.front, p.back, p.target, p.container
        );
        writeln!(
            self.out,
            "{:<15} {:<7} {comm} {host} {:<10} {:<5} {on}{}{off}",
            time_of_day(p.ts_ns),
            p.proxy_pid,
            "proxied",
            p.proto,
            crate::text::escape(&detail),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What a CONTAINER column shows: `host`, the container's name (or short id, or pod), `-`
/// when not known.
pub fn container_label(
    c: Option<&crate::model::container::Container>,
) -> compact_str::CompactString {
    c.map_or_else(|| compact_str::CompactString::const_new("-"), |c| c.label())
}
