//! Captures: `tracer watch --record FILE` on the real kernel, then `tracer replay FILE` as an
//! unprivileged user gives the live run's output byte for byte, JSON and table alike.
//!
//! With `TRACER_UPDATE_CASES=1` the JSON run's capture and output are also copied to
//! tracer/tests/cases/ (the fixtures `cargo test -p tracer` replays without root).
use std::{
    io::{BufRead, BufReader, Read},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tracer_tests::{as_nobody, free_port, prerequisites, tracer_bin};

/// A TCP server and its client (connect, accept, a request, a close on each side) and a UDP
/// datagram, all on `port`.
const WORKLOAD: &str = r#"
import socket, sys
port = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(8)
cli = socket.create_connection(("127.0.0.1", port))
conn, _ = srv.accept()
cli.sendall(b"GET / HTTP/1.0\r\n\r\n"); conn.recv(100); conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
cli.recv(100); cli.close(); conn.close(); srv.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"query", ("127.0.0.1", port)); u.close()
"#;

/// Runs `tracer watch ARGS --record FILE --port PORT` around the workload; returns its
/// stdout and stderr.
fn record(args: &[&str], file: &Path, port: u16) -> (Vec<u8>, Vec<u8>) {
    let port_text = port.to_string();
    let mut child = Command::new(tracer_bin())
        .arg("watch")
        .args(args)
        .args(["--record", file.to_str().unwrap(), "--port", &port_text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tracer");
    // Ready once the snapshot line is out (stderr for the table, stdout for JSON).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let json = args.contains(&"--json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "tracer never became ready");
        let mut line = Vec::new();
        let reader: &mut dyn BufRead = if json { &mut stdout } else { &mut stderr };
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            panic!("tracer exited before it was ready");
        }
        let ready = String::from_utf8_lossy(&line).contains("snapshot");
        if json {
            out.extend(&line)
        } else {
            err.extend(&line)
        }
        if ready {
            break;
        }
    }
    let status = Command::new("python3")
        .args(["-c", WORKLOAD, &port_text])
        .status()
        .expect("python3");
    assert!(status.success(), "workload failed");
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    stdout.read_to_end(&mut out).unwrap();
    stderr.read_to_end(&mut err).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "tracer failed: {}",
        String::from_utf8_lossy(&err)
    );
    (out, err)
}

/// `tracer replay FILE ARGS` as nobody.
fn replay(file: &Path, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let out = as_nobody(tracer_bin().to_str().unwrap())
        .arg("replay")
        .arg(file)
        .args(args)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, out.stderr)
}

/// The capture, readable by nobody (tracer creates it for its owner only).
fn share(file: &Path) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn capture_replays_byte_for_byte() {
    if !prerequisites("capture_replays_byte_for_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();

    let json_file = dir.path().join("json.capture");
    let (json_live, _) = record(&["--json"], &json_file, port);
    let live = json_live.clone();
    let live_text = String::from_utf8_lossy(&live);
    assert!(
        live_text.contains("\"event\":\"accept\""),
        "the workload was seen: {live_text}"
    );
    // The default socket path names every datagram with an address sendmsg.
    assert!(live_text.contains("\"event\":\"sendmsg\""), "{live_text}");
    share(&json_file);
    let (replayed, _) = replay(&json_file, &["--json"]);
    assert!(
        replayed == live,
        "JSON replay differs:\nlive:\n{live_text}\nreplay:\n{}",
        String::from_utf8_lossy(&replayed)
    );

    let table_file = dir.path().join("table.capture");
    let (live, live_err) = record(&["--no-color"], &table_file, port);
    share(&table_file);
    let (replayed, replayed_err) = replay(&table_file, &["--no-color"]);
    assert!(
        replayed == live,
        "table replay differs:\nlive:\n{}\nreplay:\n{}",
        String::from_utf8_lossy(&live),
        String::from_utf8_lossy(&replayed)
    );
    assert_eq!(
        String::from_utf8_lossy(&replayed_err),
        String::from_utf8_lossy(&live_err)
    );

    // Other events than the ones shown live: the replay asks other questions (port ranges of
    // events the live run did not show) and still runs to the end.
    let (connects, _) = replay(&json_file, &["--json", "--events", "connect"]);
    let connects = String::from_utf8_lossy(&connects);
    assert!(connects.contains("\"event\":\"connect\""), "{connects}");
    assert!(!connects.contains("\"event\":\"accept\""), "{connects}");
    assert!(connects.contains("\"type\":\"summary\""), "{connects}");

    // Another output than the one recorded: the same events, grouped.
    let (grouped, _) = replay(&table_file, &["--no-color", "--group-by", "remote"]);
    assert!(String::from_utf8_lossy(&grouped).contains(&format!(":{port}")));

    if std::env::var_os("TRACER_UPDATE_CASES").is_some() {
        let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/tests/cases");
        std::fs::copy(&json_file, cases.join("loopback.capture")).unwrap();
        std::fs::write(cases.join("loopback.json"), &json_live).unwrap();
    }
}

/// A capture is never written through a symlink or over an existing file: the path is the
/// user's and tracer runs as root. The hostile side (nobody, in a sticky shared directory
/// like /tmp) plants a symlink to a root-owned file and a file of its own.
#[test]
fn record_refuses_existing_files_and_symlinks() {
    if !prerequisites("record_refuses_existing_files_and_symlinks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    let link = dir.path().join("link");
    let planted = as_nobody("/usr/bin/ln")
        .arg("-s")
        .arg(&precious)
        .arg(&link)
        .status()
        .unwrap();
    assert!(planted.success(), "nobody could not plant the symlink");
    let owned = dir.path().join("owned");
    let made = as_nobody("/usr/bin/touch").arg(&owned).status().unwrap();
    assert!(made.success(), "nobody could not create a file");
    for path in [&link, &owned, &precious] {
        let out = Command::new(tracer_bin())
            .args([
                "watch",
                "--duration",
                "1",
                "--record",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} was written", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("creating capture"), "{err}");
    }
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    assert_eq!(std::fs::read(&owned).unwrap(), b"");
}

/// Run through sudo, the capture is created as the user behind it: theirs to share, and a
/// directory only root may write (where a planted symlink could point) is refused.
#[test]
fn record_creates_the_capture_as_the_user_behind_sudo() {
    if !prerequisites("record_creates_the_capture_as_the_user_behind_sudo") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let record = |path: &Path| {
        Command::new(tracer_bin())
            .args(["watch", "--duration", "1", "--port", "9", "--record"])
            .arg(path)
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .output()
            .unwrap()
    };
    // A root-only directory (0755, root's): nobody may not create files there.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = record(&dir.path().join("in-root-dir.capture"));
    assert!(
        !out.status.success(),
        "created as root in a root-only directory"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating capture"));
    // A shared sticky directory: created, and nobody's.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mine = dir.path().join("mine.capture");
    let out = record(&mine);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&mine).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600)
    );
    // nobody replays it as it is, and a copy cut short still replays up to the cut.
    let (_, err) = replay(&mine, &["--json"]);
    assert!(!String::from_utf8_lossy(&err).contains("cut short"));
    let bytes = std::fs::read(&mine).unwrap();
    let cut = dir.path().join("cut.capture");
    // Cut inside the frame that ends the run (tag, u32 length, payload after the magic line).
    let mut at = b"tracer capture\n".len();
    while bytes[at] != b'F' {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 5 + len;
    }
    std::fs::write(&cut, &bytes[..at + 3]).unwrap();
    share(&cut);
    let (_, err) = replay(&cut, &["--json"]);
    assert!(
        String::from_utf8_lossy(&err).contains("cut short"),
        "{}",
        String::from_utf8_lossy(&err)
    );
}

/// A damaged capture is a clear error, not a panic.
#[test]
fn replay_of_a_damaged_capture_is_a_clear_error() {
    if !prerequisites("replay_of_a_damaged_capture_is_a_clear_error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("bad.capture");
    std::fs::write(&file, b"tracer capture\nH\xff\xff").unwrap();
    share(&file);
    let out = as_nobody(tracer_bin().to_str().unwrap())
        .arg("replay")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot replay it"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
