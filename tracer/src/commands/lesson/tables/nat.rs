//! The NAT lesson's table: each binding, what the server saw, conntrack's reply tuple.
use serde_json::{json, Value};

use super::*;

fn endpoint(tuple: &Value, which: &str) -> String {
    format!(
        "{}:{}",
        text(&tuple[which]),
        tuple[if which == "src" { "sport" } else { "dport" }]
    )
}

/// `src=A dst=B sport=C dport=D` ×2 of a `conntrack -L` line: (original, reply).
fn conntrack_tuples(line: &str) -> Option<([String; 4], [String; 4])> {
    let fields: Vec<&str> = line
        .split_whitespace()
        .filter(|f| {
            ["src=", "dst=", "sport=", "dport="]
                .iter()
                .any(|k| f.starts_with(k))
        })
        .filter_map(|f| f.split_once('=').map(|(_, v)| v))
        .collect();
    let own = |i: usize| fields.get(i).map(|s| s.to_string());
    Some((
        [own(0)?, own(1)?, own(2)?, own(3)?],
        [own(4)?, own(5)?, own(6)?, own(7)?],
    ))
}

pub(super) fn nat(b: &mut Built, g: &Gathered, lang: Lang) {
    let bindings: Vec<&Value> = g
        .records
        .iter()
        .filter(|r| r["type"] == "nat_binding")
        .collect();
    let r = &g.report;
    let peers: Vec<String> = r["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let conntrack: Vec<([String; 4], [String; 4])> = r["conntrack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| conntrack_tuples(l.as_str()?))
        .collect();
    let mut pat = None;
    let (mut kept_ports, mut address_only) = (true, 0);
    for client in r["clients"].as_array().into_iter().flatten() {
        let local = text(&client["local"]);
        let shows = client["shows"].as_str().unwrap_or("?");
        let binding = bindings
            .iter()
            .find(|b| endpoint(&b["original"], "src") == local)
            .copied();
        let (label, notes) = match shows {
            "pat" => ("PAT/NAPT", "nat.pat"),
            "static" => ("static NAT", "nat.static"),
            "dynamic" => ("dynamic NAT", "nat.dynamic"),
            _ => ("DNAT", "nat.dnat"),
        };
        let live = binding.map(|bd| {
            let (o, t) = (&bd["original"], &bd["translated"]);
            let changed = match (
                bd["address_translated"] == true,
                bd["port_translated"] == true,
            ) {
                (_, true) => lang.t("nat.changed.both"),
                (true, false) => lang.t("nat.changed.address"),
                _ => lang.t("nat.changed.none"),
            };
            let key = if shows == "dnat" {
                "live.nat.dnat"
            } else {
                "live.nat.snat"
            };
            // What the server's accept() returned (the translated source, when it got it).
            let tsrc = endpoint(t, "src");
            let seen = peers
                .iter()
                .find(|p| **p == tsrc)
                .cloned()
                .unwrap_or_else(|| lang.t("missing").to_string());
            lang.f(
                key,
                &[
                    ("from", &endpoint(o, "src")),
                    ("to", &endpoint(o, "dst")),
                    ("tfrom", &endpoint(t, "src")),
                    ("tto", &endpoint(t, "dst")),
                    ("kind", &text(&bd["kind"]).to_uppercase()),
                    ("changed", &changed),
                    ("seen", &seen),
                ],
            )
        });
        b.rows.push(row(label, "", lang.t(notes).into(), live, binding.map_or(Value::Null, |bd| json!({"kind": bd["kind"], "original": bd["original"], "translated": bd["translated"], "port_translated": bd["port_translated"], "address_translated": bd["address_translated"]})), lang));
        let Some(bd) = binding else {
            check(
                b,
                "a binding for each connection",
                Value::Null,
                json!(local),
            );
            continue;
        };
        // What the server's accept() saw is the translated source.
        let tsrc = endpoint(&bd["translated"], "src");
        check(
            b,
            "the server's peer (accept)",
            json!(tsrc),
            json!(peers.iter().find(|p| **p == tsrc)),
        );
        // conntrack's entry for the same original tuple replies to the translated one.
        let o = &bd["original"];
        let entry = conntrack.iter().find(|(orig, _)| {
            orig[0] == text(&o["src"])
                && orig[2].parse::<u64>().ok() == o["sport"].as_u64()
                && orig[3].parse::<u64>().ok() == o["dport"].as_u64()
        });
        let reply_to = entry.map(|(_, reply)| format!("{}:{}", reply[1], reply[3]));
        // The translated tuple as conntrack keeps it: the reply's direction.
        if let (Some((_, reply)), Some(last)) = (entry, b.rows.last_mut()) {
            last.live.push_str(&lang.f(
                "live.nat.conntrack",
                &[
                    ("rfrom", &format!("{}:{}", reply[0], reply[2])),
                    ("rto", &format!("{}:{}", reply[1], reply[3])),
                ],
            ));
        }
        let expect = if shows == "dnat" {
            // A port forward's reply comes from the inside server to the client.
            endpoint(&bd["translated"], "dst")
        } else {
            tsrc.clone()
        };
        let reply_from_or_to = if shows == "dnat" {
            entry.map(|(_, reply)| format!("{}:{}", reply[0], reply[2]))
        } else {
            reply_to
        };
        check(
            b,
            "conntrack's reply tuple",
            json!(expect),
            json!(reply_from_or_to),
        );
        if shows == "pat" {
            pat = Some((endpoint(o, "src"), tsrc));
        }
        if shows == "static" || shows == "dynamic" {
            kept_ports &= bd["port_translated"] == false;
            address_only += 1;
        }
    }
    // Said only when the run showed it.
    if let Some((from, to)) = pat {
        let server_saw_5000 = peers.iter().any(|p| p.ends_with(":5000"));
        if !server_saw_5000 && !to.ends_with(":5000") {
            b.beyond
                .push(lang.f("beyond.nat.pat", &[("from", &from), ("to", &to)]));
        }
    }
    if kept_ports && address_only > 0 {
        b.beyond.push(lang.t("beyond.nat.static").to_string());
    }
    if !conntrack.is_empty() {
        b.beyond.push(lang.t("beyond.nat.conntrack").to_string());
    }
}
