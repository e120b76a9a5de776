//! `tracer lesson`: every lesson runs end to end on the real kernel, in English and in Korean;
//! each row's value is the kernel's and the lesson checks it against what its scenario's own
//! calls returned (getsockname, accept, recvfrom), which must all agree; the ports lesson is
//! compared with `ss`; the tables fit 80 columns; nothing is left behind.
use std::process::{Command, Stdio};

use serde_json::Value;
use tracer_tests::*;

const LESSONS: [&str; 9] = [
    "ports",
    "socket",
    "tcp-server",
    "tcp-client",
    "udp",
    "handshake",
    "ephemeral",
    "http",
    "nat",
];

fn lesson(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tracer_bin())
        .arg("lesson")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tracer lesson");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Terminal cells of a line: Hangul and other wide characters take two.
fn cells(line: &str) -> usize {
    line.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFF00..=0xFF60 => 2,
            _ => 1,
        })
        .sum()
}

fn leftovers() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tracer-lesson-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_lesson_runs_in_both_languages_and_agrees_with_its_programs() {
    if !prerequisites("every_lesson_runs_in_both_languages_and_agrees_with_its_programs") {
        return;
    }
    let before = leftovers();
    for name in LESSONS {
        for lang in ["en", "ko"] {
            let (ok, out, err) = lesson(&[name, "--lang", lang, "--json"]);
            assert!(ok, "lesson {name} --lang {lang}: {err}\n{out}");
            let records: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect();
            assert_eq!(records[0]["type"], "lesson");
            assert_eq!(records[0]["lang"], lang);
            let rows: Vec<&Value> = records
                .iter()
                .filter(|r| r["type"] == "lesson_row")
                .collect();
            assert!(rows.len() >= 3, "{name}: {out}");
            let missing = if lang == "ko" {
                "보지 못함"
            } else {
                "not seen"
            };
            for r in &rows {
                assert!(
                    !r["live"].as_str().unwrap().contains(missing),
                    "{name} {lang}: a row the trace did not show: {r}"
                );
            }
            let checks: Vec<&Value> = records
                .iter()
                .filter(|r| r["type"] == "lesson_check")
                .collect();
            if name != "ports" {
                assert!(!checks.is_empty(), "{name}: nothing checked");
            }
            for c in &checks {
                assert_eq!(c["ok"], true, "{name} {lang}: {c}");
            }
            // The human table: 80 columns, the notes' own words in Korean.
            let (ok, text, err) = lesson(&[name, "--lang", lang]);
            assert!(ok, "{err}");
            for line in text.lines() {
                assert!(cells(line) <= 80, "{name} {lang}: wider than 80: {line:?}");
            }
            if lang == "ko" && name == "tcp-server" {
                assert!(text.contains("소켓 생성"), "{text}");
                assert!(
                    text.contains("연결 요청 수락, 새 통신용 소켓 생성"),
                    "{text}"
                );
            }
            eprintln!(
                "lesson {name} --lang {lang}: {} rows, {} checks agree",
                rows.len(),
                checks.len()
            );
        }
    }
    assert_eq!(leftovers(), before, "a lesson left its directory behind");
}

/// The server table's values as data: fds, the kernel-chosen port in the range, the
/// handshake done before accept, the client keeping TIME_WAIT.
#[test]
fn the_tcp_server_table_shows_the_kernels_values() {
    if !prerequisites("the_tcp_server_table_shows_the_kernels_values") {
        return;
    }
    let (ok, out, err) = lesson(&["tcp-server", "--lang", "en", "--json"]);
    assert!(ok, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |step: &str, call: &str| {
        records
            .iter()
            .find(|r| r["type"] == "lesson_row" && r["step"] == step && r["call"] == call)
            .unwrap_or_else(|| panic!("no row {step} {call}: {out}"))
            .clone()
    };
    let range: Vec<u16> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let bind = row("②", "bind()");
    let port = bind["values"]["port"].as_u64().unwrap() as u16;
    assert_eq!(bind["values"]["kernel_chose"], true);
    assert!(port >= range[0] && port <= range[1], "{bind}");
    assert_eq!(row("③", "listen()")["values"]["states"], "CLOSE → LISTEN");
    let accept = row("④", "accept()");
    assert_eq!(
        accept["values"]["handshake"], "LISTEN → SYN_RECV → ESTABLISHED",
        "{accept}"
    );
    let data = row("⑤", "read()/write()");
    assert_eq!(data["values"]["received_bytes"], 5);
    assert_eq!(data["values"]["sent_bytes"], 5);
    let notes: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "lesson_note")
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("client closed first")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("ip_local_port_range")),
        "{notes:?}"
    );
}

/// The ports lesson counts what `ss` lists: the TCP listeners of this namespace by range.
#[test]
fn the_ports_lesson_counts_what_ss_lists() {
    let name = "the_ports_lesson_counts_what_ss_lists";
    if !prerequisites(name) || !tool(name, "ss", "iproute2") {
        return;
    }
    // A listener of the test's own, so each run has one to find.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mine = listener.local_addr().unwrap().port();
    let (ok, out, err) = lesson(&["ports", "--json"]);
    assert!(ok, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lesson_tcp: std::collections::BTreeSet<u64> = records
        .iter()
        .filter(|r| r["type"] == "lesson_row")
        .filter_map(|r| r["values"]["listening"].as_array())
        .flatten()
        .filter(|l| l["proto"] == "tcp")
        .map(|l| l["port"].as_u64().unwrap())
        .collect();
    let ss = Command::new("ss").args(["-Htln"]).output().unwrap();
    let ss_tcp: std::collections::BTreeSet<u64> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(lesson_tcp.contains(&u64::from(mine)), "{lesson_tcp:?}");
    assert_eq!(lesson_tcp, ss_tcp, "the lesson and ss disagree");
    drop(listener);
}

#[test]
fn the_list_and_a_wrong_name() {
    let (ok, out, _) = lesson(&["--lang", "en"]);
    assert!(ok);
    for name in LESSONS {
        assert!(out.contains(name), "{out}");
    }
    let (ok, _, err) = lesson(&["nosuch", "--lang", "en"]);
    assert!(!ok);
    assert!(err.contains("no lesson nosuch"), "{err}");
    let (ok, _, err) = lesson(&["tcp-server", "--lang", "fr"]);
    assert!(!ok, "{err}");
}

/// `trace --explain --lang ko`: the step sentences from the Korean catalogue.
#[test]
fn trace_explains_in_korean() {
    if !prerequisites("trace_explains_in_korean") {
        return;
    }
    let tracer = tracer_bin();
    let out = Command::new(&tracer)
        .args(["trace", "--explain", "--lang", "ko", "--user", "root", "--"])
        .arg(&tracer)
        .args(["__lesson-actor", "udp", "--report", "/dev/null"])
        .output()
        .expect("tracer trace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("UDP에는 connect 단계가 없다"),
        "the autobind step explained in Korean: {text}"
    );
    assert!(text.contains("socket()은 커널에 통신 종단점"), "{text}");
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("tracer-lesson-"))
        .map(str::to_string)
        .collect()
}

/// `lesson nat`: the notes' port translation (192.0.2.5:5000 → 203.0.113.10:600xx) and a
/// port forward (203.0.113.10:8080 → 192.0.2.10:80), as tracer nat and conntrack see them
/// and as the servers' accept() saw them; its namespaces are gone afterwards.
#[test]
fn the_nat_lesson_translates_a_port_and_forwards_one() {
    let name = "the_nat_lesson_translates_a_port_and_forwards_one";
    if !prerequisites(name)
        || !tool(name, "nft", "nftables")
        || !tool(name, "conntrack", "conntrack")
    {
        return;
    }
    let (ok, out, err) = lesson(&["nat", "--lang", "en", "--json"]);
    assert!(ok, "{err}\n{out}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |step: &str| {
        records
            .iter()
            .find(|r| r["type"] == "lesson_row" && r["step"] == step)
            .unwrap_or_else(|| panic!("no {step} row: {out}"))
            .clone()
    };
    let pat = row("PAT/NAPT");
    assert_eq!(pat["values"]["kind"], "snat", "{pat}");
    assert_eq!(pat["values"]["port_translated"], true, "{pat}");
    assert_eq!(pat["values"]["original"]["sport"], 5000, "{pat}");
    let tport = pat["values"]["translated"]["sport"].as_u64().unwrap();
    assert!((60000..=60099).contains(&tport), "{pat}");
    assert_eq!(pat["values"]["translated"]["src"], "203.0.113.10");
    let dnat = row("DNAT");
    assert_eq!(dnat["values"]["kind"], "dnat", "{dnat}");
    assert_eq!(dnat["values"]["translated"]["dst"], "192.0.2.10");
    assert_eq!(dnat["values"]["translated"]["dport"], 80);
    let stat = row("static NAT");
    assert_eq!(stat["values"]["translated"]["src"], "203.0.113.11");
    assert_eq!(stat["values"]["port_translated"], false, "{stat}");
    for c in records.iter().filter(|r| r["type"] == "lesson_check") {
        assert_eq!(c["ok"], true, "{c}");
    }
    assert!(namespaces().is_empty(), "left behind: {:?}", namespaces());
}

/// `--record FILE` as root, then `--replay FILE` as an unprivileged user in the other
/// language: the same values, no root needed; a file that is not a recording is refused.
#[test]
fn a_recorded_lesson_replays_without_root() {
    let name = "a_recorded_lesson_replays_without_root";
    if !prerequisites(name) || !tool(name, "setpriv", "util-linux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tcp-server.lesson");
    let path = file.to_str().unwrap();
    let (ok, live, err) = lesson(&["tcp-server", "--lang", "en", "--json", "--record", path]);
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody(tracer_bin().to_str().unwrap())
        .args(["lesson", "--replay", path, "--lang", "ko", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = String::from_utf8_lossy(&out.stdout);
    let values = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["type"] == "lesson_row")
            .map(|r| r["values"].clone())
            .collect()
    };
    assert_eq!(
        values(&live),
        values(&replayed),
        "the replay shows the recorded values"
    );
    assert!(replayed.contains("\"lang\":\"ko\""));
    assert!(replayed.contains("replayed_from"));
    // Not a recording: a clear error, no panic.
    std::fs::write(dir.path().join("junk"), b"{\"type\":\"nope\"}").unwrap();
    let (ok, _, err) = lesson(&["--replay", dir.path().join("junk").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a lesson recording"), "{err}");
}
