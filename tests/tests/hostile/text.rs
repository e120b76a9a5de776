//! Hostile users: names. A process any user starts names itself with bytes cut inside a UTF-8
//! character, with terminal escape sequences, with a bidi override; tracer keeps running and
//! shows each name escaped, in the human table, in JSON and in `ports`. The process (not the
//! thread) names the owner, as `ps` and `ss` do.
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::{as_nobody, free_port, prerequisites, tracer_bin, tracer_json, Tracer};

/// As the unprivileged user: name the process `name` (raw bytes, `prctl(PR_SET_NAME)`), listen
/// on 127.0.0.1:`port`, and connect to it from a thread named `worker-thr`; hold both for
/// `hold_s` seconds (so `ports` can see them), then close.
const HOSTILE: &str = r#"
import ctypes, socket, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
name = bytes.fromhex(sys.argv[1])
port = int(sys.argv[2])
hold = float(sys.argv[3])
assert libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0) == 0
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(4)
held = []
def client():
    assert libc.prctl(15, ctypes.c_char_p(b"worker-thr"), 0, 0, 0) == 0
    c = socket.create_connection(("127.0.0.1", port))
    held.append(c)
t = threading.Thread(target=client)
t.start()
conn, _ = srv.accept()
t.join()
print("ready", flush=True)
time.sleep(hold)
conn.close()
for c in held:
    c.close()
srv.close()
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the hostile process as `nobody`; returns it once its sockets are up.
fn hostile(name: &[u8], port: u16, hold_s: f32) -> Child {
    let mut child = as_nobody("/usr/bin/python3")
        .args([
            "-c",
            HOSTILE,
            &hex(name),
            &port.to_string(),
            &hold_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 as nobody");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the hostile process did not start");
    child
}

/// `tracer watch --port PORT` with its human table captured (not a terminal: no colour).
fn human_watch(port: u16) -> Child {
    let mut child = Command::new(tracer_bin())
        .args(["watch", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        assert!(Instant::now() < deadline, "watch did not attach");
        assert!(stderr.read_line(&mut line).unwrap() > 0, "watch exited");
    }
    // Status lines keep coming: read them in the background.
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
        assert!(!rest.contains(&0x1b), "an escape byte reached stderr");
    });
    child
}

fn stop(mut child: Child) -> Vec<u8> {
    assert!(
        child.try_wait().unwrap().is_none(),
        "tracer exited while a user named a process"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}

fn assert_terminal_safe(what: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    for c in text.chars() {
        assert!(
            !((c < ' ' && c != '\n') || ('\u{7f}'..='\u{9f}').contains(&c) || c == '\u{202e}'),
            "{what}: {c:?} reached the output:\n{text}"
        );
    }
}

/// (the name as set, what the human table shows of it, what JSON carries)
fn cases() -> Vec<(Vec<u8>, &'static str, String)> {
    let cut = [b"a".as_slice(), &[0xff; 14]].concat();
    vec![
        // The panic of issue 14: a name cut inside a multi-byte character.
        (cut, "a\\xff\\xff\\xff", format!("a{}", "\\xff".repeat(14))),
        // Clear the screen, then paint in red.
        (
            b"\x1b[2J\x1b[31mEVIL".to_vec(),
            "\\x1b[2J\\x1b[3",
            "\x1b[2J\x1b[31mEVIL".to_string(),
        ),
        // A right-to-left override that would turn the rest of the line around.
        (
            "\u{202e}lmth.exe".as_bytes().to_vec(),
            "\\u{202e}lmth.",
            "\u{202e}lmth.exe".to_string(),
        ),
    ]
}

#[test]
fn hostile_process_names_are_escaped_everywhere() {
    if !prerequisites("hostile_process_names_are_escaped_everywhere") {
        return;
    }
    for (name, shown, in_json) in cases() {
        let port = free_port();
        let watch = human_watch(port);
        let mut json = Tracer::watch(&["--port", &port.to_string()]);
        let mut user = hostile(&name, port, 2.0);
        // While the sockets are held: `ports` (a snapshot, as root) names them too.
        let mut ports_out = Command::new(tracer_bin())
            .args(["ports", "--port", &port.to_string()])
            .output()
            .unwrap();
        assert!(ports_out.status.success(), "ports failed");
        assert_terminal_safe("ports", &ports_out.stdout);
        let ports_text = String::from_utf8(std::mem::take(&mut ports_out.stdout)).unwrap();
        assert!(
            ports_text.contains(shown),
            "ports does not show {shown:?}:\n{ports_text}"
        );
        let records = tracer_json(&["ports", "--json", "--port", &port.to_string()]);
        assert!(
            records.iter().any(|r| r["comm"] == in_json.as_str()),
            "ports --json has no comm {in_json:?}: {records:?}"
        );
        assert!(user.wait().unwrap().success());

        json.wait_for("the hostile connect", Duration::from_secs(20), |events| {
            events
                .iter()
                .any(|e| e["event"] == "connect" && e["comm"] == in_json.as_str())
        });
        let connect = json
            .events
            .iter()
            .find(|e| e["event"] == "connect" && e["comm"] == in_json.as_str())
            .unwrap()
            .clone();
        // The process names the owner; the thread that connected keeps its own name.
        assert_eq!(connect["thread"], "worker-thr", "{connect}");
        let listen = json
            .events
            .iter()
            .find(|e: &&Value| e["event"] == "listen")
            .unwrap();
        assert_eq!(listen["comm"], in_json.as_str());
        assert_eq!(listen["thread"], in_json.as_str());
        let (status, _) = json.stop_with(libc::SIGINT);
        assert!(status.success());

        let table = stop(watch);
        assert_terminal_safe("watch", &table);
        let table = String::from_utf8(table).unwrap();
        assert!(
            table
                .lines()
                .any(|l| l.contains(shown) && l.contains(" listen ")),
            "watch does not show {shown:?}:\n{table}"
        );
    }
}
