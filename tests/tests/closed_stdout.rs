//! A closed stdout (`tracer … | head -n1`) ends every subcommand quietly with status 0: no
//! panic, no error on stderr; `trace` stops tracing and leaves its command to finish untraced.
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracer_tests::*;

const T: Duration = Duration::from_secs(30);

/// A pipe whose read end is already closed: the first write gets EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// Waits for `child` to exit (killing it after `T`); returns (code, stderr).
fn finish(mut child: Child, what: &str) -> (Option<i32>, String) {
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not end after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    (status.code(), err)
}

fn assert_quiet(what: &str, code: Option<i32>, err: &str) {
    assert_eq!(code, Some(0), "{what}: {err}");
    for bad in ["panicked", "Broken pipe", "error", "writing output"] {
        assert!(!err.contains(bad), "{what}: {bad:?} on stderr:\n{err}");
    }
}

/// `doctor` and `ports` (table and JSON) write into a pipe nobody reads.
#[test]
fn one_shot_commands_end_quietly() {
    if !prerequisites("one_shot_commands_end_quietly") {
        return;
    }
    for args in [
        &["doctor"][..],
        &["ports"],
        &["ports", "--json"],
        &["ports", "--group-by", "remote"],
    ] {
        let child = Command::new(tracer_bin())
            .args(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (code, err) = finish(child, &format!("{args:?}"));
        assert_quiet(&format!("{args:?}"), code, &err);
    }
}

/// `tracer ARGS | head -n1`: reads one line, closes the pipe, and returns the child.
fn head_n1(args: &[&str]) -> Child {
    let mut child = Command::new(tracer_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(stdout);
    child
}

/// Connections on loopback, for tracer to have something to write.
fn some_traffic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for _ in 0..20 {
        let _ = std::net::TcpStream::connect(addr);
    }
}

/// `watch` and `nat`, human and JSON: with traffic (a write fails) and idle (nothing more to
/// write: the closed pipe is noticed anyway).
#[test]
fn streaming_commands_end_quietly() {
    if !prerequisites("streaming_commands_end_quietly") {
        return;
    }
    let busy: [&[&str]; 2] = [&["watch"], &["watch", "--json"]];
    for args in busy {
        let child = head_n1(args);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    some_traffic();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let (code, err) = finish(child, &format!("{args:?}"));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        traffic.join().unwrap();
        assert_quiet(&format!("{args:?} with traffic"), code, &err);
    }
    // Port 1: nothing will ever match, so nothing more is written.
    let idle: [&[&str]; 4] = [
        &["watch", "--port", "1"],
        &["watch", "--json", "--port", "1"],
        &["nat", "--no-flows"],
        &["nat", "--json"],
    ];
    for args in idle {
        let child = head_n1(args);
        let (code, err) = finish(child, &format!("{args:?}"));
        assert_quiet(&format!("{args:?} idle"), code, &err);
    }
}

/// `trace … | head -n1`: tracing stops (tracer holds no BPF program any more) while the
/// command goes on, untraced, to its end; then tracer exits 0.
#[test]
fn trace_leaves_the_command_to_finish_untraced() {
    if !prerequisites("trace_leaves_the_command_to_finish_untraced") {
        return;
    }
    // Human: the command's own first line is what `head` reads. JSON: the trace_start record
    // (then the command must not write to the closed pipe: SIGPIPE would end it early).
    let human = "echo first-line; sleep 3; echo command-finished >&2";
    let json = "sleep 3; echo command-finished >&2";
    for (mode, script) in [(None, human), (Some("--json"), json)] {
        let mut args = vec!["trace", "--user", "nobody"];
        args.extend(mode);
        args.extend(["--", "sh", "-c", script]);
        let child = head_n1(&args);
        let pid = child.id();
        let deadline = Instant::now() + T;
        while !bpf_programs_of(pid).is_empty() {
            assert!(Instant::now() < deadline, "{args:?}: still tracing");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{args:?}: tracer waits for its command"
        );
        let (code, err) = finish(child, &format!("{args:?}"));
        assert_quiet(&format!("{args:?}"), code, &err);
        assert!(err.contains("command-finished"), "{args:?}: {err}");
    }
}
