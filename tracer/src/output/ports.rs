//! Text and JSON renderings of the ports views: the socket table (`ss`-like, with owners and
//! port classes and service names), the ephemeral-range usage, and connections grouped by
//! remote endpoint.
use std::io::{self, Write};

use serde::{ser::SerializeStruct, Serialize, Serializer};

use crate::model::{
    ephemeral::{below_iana_dynamic, Usage},
    ports::{PortRow, RemoteGroup},
    types::PortNames,
};

pub const HEADER: &str =
    "PROTO LADDR           LPORT RADDR           RPORT STATE       RECV-Q SEND-Q PID     COMM            CONTAINER    SERVICE      CLASS";

/// The SERVICE column: the service of the connection's server port, the local port for
/// listeners and accepted connections, the remote port for outgoing ones.
pub fn service(r: &PortRow, names: PortNames) -> &'static str {
    let server_port = if r.listening || r.accepted || r.rport == 0 {
        r.lport
    } else {
        r.rport
    };
    names(server_port, r.proto).unwrap_or("-")
}

fn addr(a: &std::net::IpAddr) -> String {
    let text = a.to_string();
    let chars = text.chars().count();
    if chars > 15 {
        // Keep the columns: the tail of a long IPv6 address says most.
        let tail: String = text.chars().skip(chars - 14).collect();
        format!("…{tail}")
    } else {
        text
    }
}

/// One row in the table's columns. Several holders show as `pid,pid`.
pub fn row_line(r: &PortRow, names: PortNames) -> String {
    let pids = if r.owners.is_empty() {
        "-".to_string()
    } else {
        r.owners
            .iter()
            .map(|o| o.pid.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (raddr, rport) = if r.rport == 0 {
        ("*".to_string(), "*".to_string())
    } else {
        (addr(&r.raddr), r.rport.to_string())
    };
    let queue = |q: Option<u32>| q.map_or("-".to_string(), |n| n.to_string());
    format!(
        "{:<5} {:<15} {:>5} {:<15} {:>5} {:<11} {:>6} {:>6} {:<7} {} {} {} {}",
        r.proto,
        addr(&r.laddr),
        r.lport,
        raddr,
        rport,
        r.state,
        queue(r.recv_q),
        queue(r.send_q),
        pids,
        crate::text::pad(r.comm.as_deref().unwrap_or("-"), 15),
        crate::text::pad(
            &crate::output::human::container_label(r.container.as_deref()),
            12
        ),
        // From a file: escaped and cut like the command name.
        crate::text::pad(service(r, names), 12),
        r.class
    )
}

pub fn write_table(out: &mut impl Write, rows: &[PortRow], names: PortNames) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    for r in rows {
        writeln!(out, "{}", row_line(r, names))?;
    }
    Ok(())
}

/// One line about a namespace's range: its size and how much of it lies below IANA's.
pub fn range_line(netns: u32, range: (u16, u16)) -> String {
    let size = u32::from(range.1 - range.0) + 1;
    let below = below_iana_dynamic(range);
    let iana = if below == 0 {
        "all inside IANA's dynamic range 49152-65535".to_string()
    } else if below == size {
        "none inside IANA's dynamic range 49152-65535".to_string()
    } else {
        format!("{below} of them below IANA's dynamic range 49152-65535")
    };
    format!(
        "netns {netns}: ip_local_port_range {}-{} ({size} ports, {iana})",
        range.0, range.1
    )
}

/// `tcp to 127.0.0.1:8001 from 127.0.0.1: 8 of 8 in use, 0 left (100.0%), peak 8 · curl ·
/// 2 connects found no port (EADDRNOTAVAIL)  ⚠ near exhaustion`. Process names are escaped.
pub fn usage_line(u: &Usage) -> String {
    let mut line = format!(
        "{} {}: {} of {} in use, {} left ({:.1}%), peak {}",
        u.proto,
        u.scope_label(),
        u.in_use,
        u.range_size,
        u.headroom,
        u.percent,
        u.peak
    );
    if u.time_wait > 0 {
        line += &format!(", {} in TIME_WAIT", u.time_wait);
    }
    if u.scope == "destination" && u.exclusive > 0 {
        line += &format!(", {} held exclusively", u.exclusive);
    }
    if !u.processes.is_empty() {
        let names: Vec<_> = u.processes.iter().map(|p| crate::text::escape(p)).collect();
        line += &format!(" · {}", names.join(", "));
    }
    if u.failed > 0 {
        line += &format!(
            " · {} connect{} found no port (EADDRNOTAVAIL)",
            u.failed,
            if u.failed == 1 { "" } else { "s" }
        );
    }
    if u.percent >= crate::model::ephemeral::WARN_PERCENT {
        line += "  ⚠ near exhaustion";
    }
    line
}

/// Usage lines per namespace in the footer, at most.
const FOOTER_LINES: usize = 8;

/// The footer: each namespace's range, then its usage, the fullest scopes first.
pub fn write_usage(
    out: &mut impl Write,
    ranges: &[(u32, (u16, u16))],
    usage: &[Usage],
) -> io::Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "Ephemeral ports (the kernel picks a client's local port from ip_local_port_range):"
    )?;
    for (netns, range) in ranges {
        writeln!(out, "  {}", range_line(*netns, *range))?;
        let here: Vec<&Usage> = usage.iter().filter(|u| u.netns == *netns).collect();
        // The fullest first (the report's order); a host talking to thousands of
        // destinations gets a line for the rest.
        for u in here.iter().take(FOOTER_LINES) {
            writeln!(out, "    {}", usage_line(u))?;
        }
        if here.len() > FOOTER_LINES {
            let rest = &here[FOOTER_LINES..];
            let ports: usize = rest.iter().map(|u| u.in_use).sum();
            writeln!(
                out,
                "    … {} more (destinations or protocols), {ports} ports in use among them (--json lists all)",
                rest.len()
            )?;
        }
    }
    Ok(())
}

pub fn write_groups(
    out: &mut impl Write,
    groups: &[RemoteGroup],
    names: PortNames,
) -> io::Result<()> {
    if groups.is_empty() {
        writeln!(out, "No outgoing connections.")?;
    }
    for g in groups {
        writeln!(
            out,
            "{} {}:{} ({}) — {} connection{} from {} local port{}",
            g.proto,
            g.raddr,
            g.rport,
            crate::text::escape(&super::services::with_class(
                names,
                g.rport,
                g.proto,
                g.rport_class
            )),
            g.connections,
            if g.connections == 1 { "" } else { "s" },
            g.local_ports,
            if g.local_ports == 1 { "" } else { "s" },
        )?;
        for l in &g.locals {
            let proxied = l
                .proxied_for
                .map_or(String::new(), |c| format!(", proxying {c}'s connection"));
            writeln!(
                out,
                "    {}:{:<5} {:<11} {:>7} {} {}{proxied}",
                l.laddr,
                l.lport,
                l.state,
                l.pid.map_or("-".to_string(), |p| p.to_string()),
                crate::text::pad(l.comm.as_deref().unwrap_or("-"), 15),
                if l.ephemeral {
                    "ephemeral (kernel-chosen)"
                } else {
                    ""
                }
            )?;
        }
    }
    Ok(())
}

/// A `socket` record: the row, with its ports' service names next to their classes.
struct SocketRecord<'a> {
    row: &'a PortRow,
    lport_service: Option<&'static str>,
    /// None without a remote end.
    rport_service: Option<&'static str>,
}

impl Serialize for SocketRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.row;
        let mut out = s.serialize_struct("SocketRecord", 30)?;
        out.serialize_field("type", "socket")?;
        out.serialize_field("netns", &r.netns)?;
        out.serialize_field("proto", &r.proto)?;
        out.serialize_field("family", &r.family)?;
        out.serialize_field("laddr", &r.laddr)?;
        out.serialize_field("lport", &r.lport)?;
        out.serialize_field("raddr", &r.raddr)?;
        out.serialize_field("rport", &r.rport)?;
        out.serialize_field("state", &r.state)?;
        out.serialize_field("pid", &r.pid)?;
        out.serialize_field("comm", &r.comm)?;
        out.serialize_field("owners", &r.owners)?;
        let fields = crate::model::container::ContainerFields(r.container.as_deref());
        for (key, value) in crate::model::container::ContainerFields::KEYS
            .into_iter()
            .zip(fields.values())
        {
            out.serialize_field(key, &value)?;
        }
        out.serialize_field("class", &r.class)?;
        out.serialize_field("recv_q", &r.recv_q)?;
        out.serialize_field("send_q", &r.send_q)?;
        out.serialize_field("lport_class", r.lport_class)?;
        out.serialize_field("lport_service", &self.lport_service)?;
        out.serialize_field("rport_service", &self.rport_service)?;
        out.serialize_field("ephemeral", &r.ephemeral)?;
        out.serialize_field("lport_in_ephemeral_range", &r.lport_in_ephemeral_range)?;
        out.serialize_field(
            "lport_in_iana_dynamic_range",
            &r.lport_in_iana_dynamic_range,
        )?;
        out.serialize_field("listening", &r.listening)?;
        out.serialize_field("accepted", &r.accepted)?;
        out.serialize_field("from_snapshot", &r.from_snapshot)?;
        out.end()
    }
}

/// A `remote` record: a group of connections to one remote endpoint, its port's service
/// next to its class.
struct RemoteRecord<'a> {
    group: &'a RemoteGroup,
    rport_service: Option<&'static str>,
}

impl Serialize for RemoteRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = self.group;
        let mut out = s.serialize_struct("RemoteRecord", 10)?;
        out.serialize_field("type", "remote")?;
        out.serialize_field("netns", &g.netns)?;
        out.serialize_field("proto", &g.proto)?;
        out.serialize_field("raddr", &g.raddr)?;
        out.serialize_field("rport", &g.rport)?;
        out.serialize_field("rport_class", g.rport_class)?;
        out.serialize_field("rport_service", &self.rport_service)?;
        out.serialize_field("connections", &g.connections)?;
        out.serialize_field("local_ports", &g.local_ports)?;
        out.serialize_field("locals", &g.locals)?;
        out.end()
    }
}

/// JSON lines: a `remote` record per group.
pub fn write_groups_json(
    out: &mut impl Write,
    groups: &[RemoteGroup],
    names: PortNames,
) -> io::Result<()> {
    for group in groups {
        let record = RemoteRecord {
            group,
            rport_service: names(group.rport, group.proto),
        };
        crate::text::json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub const MAPPINGS_HEADER: &str =
    "PROTO HOST                  FORWARDED BY                       TARGET                CONTAINER    PID     COMM";

/// `ports --mappings`: a line per published port.
pub fn write_mappings(
    out: &mut impl Write,
    mappings: &[crate::model::mapping::Mapping],
) -> io::Result<()> {
    writeln!(out, "{MAPPINGS_HEADER}")?;
    for m in mappings {
        let host = match m.host_addr.as_deref() {
            None => format!("*:{}", m.host_port),
            Some(a) if a.contains(':') && !a.contains('/') => format!("[{a}]:{}", m.host_port),
            Some(a) => format!("{a}:{}", m.host_port),
        };
        let mut by = Vec::new();
        if let Some(rule) = &m.rule {
            by.push(format!("DNAT {rule}"));
        }
        if let (Some(pid), Some(comm)) = (m.proxy_pid, &m.proxy_comm) {
            by.push(format!("{comm}[{pid}]"));
        }
        let by = if by.is_empty() {
            "-".to_string()
        } else {
            by.join(" + ")
        };
        let target = crate::model::types::Endpoint::new(m.target_addr, m.target_port).to_string();
        writeln!(
            out,
            "{:<5} {} {} {} {} {:<7} {}",
            // From the rules' text: escaped like every name.
            crate::text::escape(&m.proto),
            crate::text::pad(&host, 21),
            crate::text::pad(&by, 34),
            crate::text::pad(&target, 21),
            crate::text::pad(m.container.as_deref().unwrap_or("-"), 12),
            m.pid.map_or("-".to_string(), |p| p.to_string()),
            crate::text::escape(m.comm.as_deref().unwrap_or("-")),
        )?;
    }
    Ok(())
}

/// `ports --mappings --json`: a `mapping` record per published port.
pub fn write_mappings_json(
    out: &mut impl Write,
    mappings: &[crate::model::mapping::Mapping],
) -> io::Result<()> {
    for m in mappings {
        crate::text::json::to_writer(&mut *out, &crate::output::wire::Tagged::new("mapping", m))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// JSON lines: a `socket` record per row, then `ephemeral_range` and `ephemeral` usage records.
pub fn write_json(
    out: &mut impl Write,
    rows: &[PortRow],
    ranges: &[(u32, (u16, u16))],
    usage: &[Usage],
    names: PortNames,
) -> io::Result<()> {
    for row in rows {
        let record = SocketRecord {
            row,
            lport_service: names(row.lport, row.proto),
            rport_service: (row.rport != 0)
                .then(|| names(row.rport, row.proto))
                .flatten(),
        };
        crate::text::json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    for (netns, range) in ranges {
        let record = serde_json::json!({
            "type": "ephemeral_range",
            "netns": netns,
            "range": range,
            "range_size": u32::from(range.1 - range.0) + 1,
            "below_iana_dynamic": below_iana_dynamic(*range),
            "iana_dynamic_range": [49152, 65535],
        });
        crate::text::json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    for u in usage {
        write_usage_json(out, "ephemeral", u)?;
    }
    Ok(())
}

/// A usage record: `ephemeral` (a report) or `ephemeral_warning` (usage crossed 80 %).
pub fn write_usage_json(out: &mut impl Write, record: &str, u: &Usage) -> io::Result<()> {
    let mut value = serde_json::to_value(u)?;
    value["type"] = record.into();
    crate::text::json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")
}

/// `listen queue of 203.0.113.2:8082 (python3, pid 41) full: 12 connections refused (queue
/// 2, backlog 1; 126 since it opened)` — not escaped (the caller does, for its terminal).
pub fn overflow_line(o: &crate::model::listen::ListenOverflow) -> String {
    let owner = match (&o.comm, o.pid) {
        (Some(comm), Some(pid)) => format!(" ({comm}, pid {pid})"),
        _ => String::new(),
    };
    let endpoint = crate::model::types::Endpoint::new(o.laddr, o.lport);
    let plural = if o.dropped == 1 { "" } else { "s" };
    let what = if o.full {
        format!("full: {} connection attempt{plural} refused", o.dropped)
    } else {
        format!("{} connection attempt{plural} dropped", o.dropped)
    };
    format!(
        "listen queue of {endpoint}{owner} in netns {}: {what} (queue {}, backlog {}; {} since \
         it opened)",
        o.netns, o.queue, o.backlog, o.dropped_total
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ports::{by_remote, fixtures::sample_table, rows};
    use crate::output::services::standard;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_usage_and_groups_render() {
        let table = sample_table();
        let rows = rows(&table);
        let usage = table.usage().report();
        let ranges = [(1, (32768, 60999))];
        insta::assert_snapshot!(
            "ports_table",
            text(|o| write_table(o, &rows, standard).and_then(|_| write_usage(o, &ranges, &usage)))
        );
        insta::assert_snapshot!(
            "ports_groups",
            text(|o| write_groups(o, &by_remote(&rows), standard))
        );
        let json = text(|o| write_json(o, &rows, &ranges, &usage, standard));
        let records: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), rows.len() + 2);
        let sshd = records.iter().find(|r| r["lport"] == 22).unwrap();
        assert_eq!(
            sshd["owners"].as_array().unwrap().len(),
            2,
            "both holders listed"
        );
        let client = records.iter().find(|r| r["lport"] == 41000).unwrap();
        assert_eq!(client["class"], "ephemeral (registered)");
        assert_eq!(client["lport_in_ephemeral_range"], true);
        assert_eq!(client["lport_in_iana_dynamic_range"], false);
        assert_eq!(client["lport_service"], serde_json::Value::Null);
        assert_eq!(client["rport_service"], "http-alt");
        assert_eq!(sshd["lport_service"], "ssh");
        assert_eq!(sshd["rport_service"], serde_json::Value::Null);
        assert_eq!(records.last().unwrap()["type"], "ephemeral");
    }

    #[test]
    fn range_lines_compare_with_iana() {
        assert_eq!(
            range_line(1, (32768, 60999)),
            "netns 1: ip_local_port_range 32768-60999 (28232 ports, 16384 of them below IANA's dynamic range 49152-65535)"
        );
        assert!(range_line(1, (49152, 65535)).contains("all inside"));
        assert!(range_line(1, (40000, 40007)).contains("none inside"));
    }
}
