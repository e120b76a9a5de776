//! `tracer lesson`: the study notes' tables with the kernel's values beside each row. A lesson
//! runs a small real scenario (`actor`, on 127.0.0.1) under `tracer trace --json` — the normal
//! pipeline, as a child process — and builds the notes' table from the stories it prints; the
//! scenario writes down what its own calls returned, and every value is checked against it.
//! Nothing is canned: a value the trace did not show is shown as missing.
use std::io::{self, IsTerminal, Write};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::cli::LessonConfig;
use crate::error::{Error, Result};

pub mod actor;
mod nat;
mod tables;

use crate::i18n::Lang;

/// The lessons, in the order the notes teach them: name, scenario (None: no program runs).
pub const LESSONS: [(&str, Option<&str>); 9] = [
    ("ports", None),
    ("socket", Some("two")),
    ("tcp-server", Some("tcp")),
    ("tcp-client", Some("tcp")),
    ("udp", Some("udp")),
    ("handshake", Some("tcp")),
    ("ephemeral", Some("tabs")),
    ("http", Some("http")),
    ("nat", Some("nat")),
];

/// One row of a notes' table: the step, the call, what the notes say, what the kernel did.
pub struct Row {
    pub step: String,
    pub call: String,
    pub notes: String,
    pub live: String,
    /// The live values as data (for `--json`).
    pub values: Value,
}

/// A value checked against what the scenario's own calls returned.
pub struct Check {
    pub what: &'static str,
    pub kernel: Value,
    pub program: Value,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.kernel == self.program
    }
}

/// What a lesson shows.
#[derive(Default)]
pub struct Built {
    pub rows: Vec<Row>,
    pub beyond: Vec<String>,
    pub checks: Vec<Check>,
    /// Shown from this recording, not run now.
    pub replayed: Option<String>,
}

/// What a run gathered: the trace's records and the scenario's report, or the socket list.
pub struct Gathered {
    pub records: Vec<Value>,
    pub report: Value,
    /// This namespace's ip_local_port_range.
    pub range: (u16, u16),
}

/// Lists the lessons, or runs one; the exit code (1 when a value did not match).
pub fn run(config: LessonConfig) -> Result<i32> {
    let lang = config.lang;
    let (name, gathered) = if let Some(path) = &config.replay {
        let (recorded, gathered) = replay(path)?;
        if config.name.as_deref().is_some_and(|n| n != recorded) {
            return Err(Error::Invalid(format!(
                "{} is a recording of lesson {recorded}",
                path.display()
            )));
        }
        (recorded, gathered)
    } else {
        let Some(name) = config.name else {
            list(lang, config.json).map_err(|e| Error::io("writing output", e))?;
            return Ok(0);
        };
        let Some((name, scenario)) = LESSONS.iter().find(|(n, _)| *n == name) else {
            return Err(Error::Invalid(
                lang.f("unknown", &[("name", &crate::text::escape(&name))]),
            ));
        };
        crate::kernel::prereq::require_root("lesson")?;
        // The recording's file first: a path that cannot be written fails before the run.
        let recording = match &config.record {
            Some(path) => Some((
                path,
                crate::source::capture::create_users_file(
                    path,
                    crate::source::capture::sudo_user(),
                )
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?,
            )),
            None => None,
        };
        let gathered = gather(*scenario)?;
        if let Some((path, file)) = recording {
            record(path, file, name, &gathered)?;
        }
        (*name, gathered)
    };
    let mut built = tables::build(name, &gathered, lang);
    built.replayed = config.replay.as_ref().map(|p| p.display().to_string());
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if config.json {
        json_out(&mut out, name, lang, &built)
    } else {
        human(&mut out, name, lang, &built)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("writing output", e))?;
    Ok(if built.checks.iter().all(Check::ok) {
        0
    } else {
        1
    })
}

fn list(lang: Lang, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        for (name, _) in LESSONS {
            let record = json!({
                "type": "lesson",
                "lesson": name,
                "title": lang.t(&format!("{name}.title")),
                "notes": lang.t(&format!("{name}.notes")),
                "what": lang.t(&format!("{name}.what")),
            });
            writeln!(out, "{record}")?;
        }
        return Ok(());
    }
    writeln!(out, "{}", lang.t("list.title"))?;
    writeln!(out, "{}", lang.t("list.run"))?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<12} {}",
        lang.t("list.head.name"),
        lang.t("list.head.notes")
    )?;
    for (name, _) in LESSONS {
        writeln!(out, "{name:<12} {}", lang.t(&format!("{name}.notes")))?;
        for line in wrap(lang.t(&format!("{name}.what")), 80 - 13) {
            writeln!(out, "{:<12} {line}", "")?;
        }
    }
    Ok(())
}

/// Runs the scenario under `tracer trace --json` (this same binary), as root, and reads back
/// the trace's records and the scenario's report. The report lives in a directory only root
/// can reach, removed afterwards.
fn gather(scenario: Option<&str>) -> Result<Gathered> {
    let range = crate::kernel::netns::read_port_range()?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding tracer's own executable", e))?;
    let Some(scenario) = scenario else {
        // The ports lesson: the sockets open on this machine now, as `tracer ports` lists them.
        let out = Command::new(&exe)
            .args(["ports", "--json"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Error::io("running tracer ports", e))?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "tracer ports failed ({}): the lesson has no sockets to show",
                out.status
            )));
        }
        return Ok(Gathered {
            records: records(&out.stdout),
            report: Value::Null,
            range,
        });
    };
    let dir = tempfile::Builder::new()
        .prefix("tracer-lesson-")
        .tempdir()
        .map_err(|e| Error::io("making the lesson's directory", e))?;
    if scenario == "nat" {
        let _quiet = InterruptWait::install();
        return nat::gather(&exe, dir.path());
    }
    let report = dir.path().join("report.json");
    // Ctrl-C reaches the trace (which stops the scenario and detaches) and this process alike:
    // this one waits for the trace to finish instead of dying first.
    let _quiet = InterruptWait::install();
    let out = Command::new(&exe)
        .args(["trace", "--json", "--user", "root", "--"])
        .arg(&exe)
        .args(["__lesson-actor", scenario, "--report"])
        .arg(&report)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io("running tracer trace", e))?;
    let records = records(&out.stdout);
    let report: Value = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the lesson's scenario did not finish (tracer trace exited with {})",
                out.status
            ))
        })?;
    // The scenario's own namespace's range: the one its ports came from.
    let port = |i: usize| {
        report["range"][i]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    };
    let range = port(0).zip(port(1)).unwrap_or(range);
    Ok(Gathered {
        records,
        report,
        range,
    })
}

/// A recording's format version (`--record`).
const RECORDING_VERSION: u64 = 1;
/// A recording read at most (a lesson's is a few kilobytes).
const MAX_RECORDING: u64 = 16 << 20;
/// Records (and items of each list in the scenario's report) taken from a recording at most.
const MAX_REPLAYED: usize = 1000;

/// Writes what a run gathered into `file` (created for the user behind sudo, never through a
/// symlink or over an existing file: as `watch --record` does).
fn record(path: &std::path::Path, file: std::fs::File, name: &str, g: &Gathered) -> Result<()> {
    let recording = json!({
        "type": "lesson_recording",
        "version": RECORDING_VERSION,
        "lesson": name,
        "range": [g.range.0, g.range.1],
        "report": g.report,
        "records": g.records,
    });
    let mut file = file;
    file.write_all(recording.to_string().as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A recording: the lesson it is of, and what that run gathered.
fn replay(path: &std::path::Path) -> Result<(&'static str, Gathered)> {
    use std::io::Read;
    let bad = |why: &str| Error::Invalid(format!("{}: {why}", path.display()));
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORDING + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > MAX_RECORDING {
        return Err(bad("larger than a lesson recording can be"));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not a lesson recording"))?;
    if v["type"] != "lesson_recording" || v["version"] != RECORDING_VERSION {
        return Err(bad("not a lesson recording of this tracer's version"));
    }
    let name = LESSONS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| v["lesson"] == *n)
        .ok_or_else(|| bad("a recording of no lesson this tracer has"))?;
    let port = |i: usize| v["range"][i].as_u64().and_then(|p| u16::try_from(p).ok());
    let range = (port(0).unwrap_or(32768), port(1).unwrap_or(60999));
    // A recording is anyone's file: what the tables walk is bounded (a lesson's run has a few
    // dozen records; the tables pair lists with each other).
    let mut report = v["report"].clone();
    for list in ["clients", "servers", "conntrack", "tab_ports", "ports"] {
        if let Some(items) = report.get_mut(list).and_then(Value::as_array_mut) {
            items.truncate(MAX_REPLAYED);
        }
    }
    let mut records = v["records"].as_array().cloned().unwrap_or_default();
    records.truncate(MAX_REPLAYED);
    Ok((
        name,
        Gathered {
            records,
            report,
            range,
        },
    ))
}

fn records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// SIGINT and SIGTERM only interrupt the wait while installed (a caught signal's handler does
/// not survive exec, so the trace child keeps its own).
struct InterruptWait;

impl InterruptWait {
    fn install() -> Self {
        extern "C" fn nothing(_: libc::c_int) {}
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(nothing),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
            // SAFETY: the handler does nothing (async-signal-safe).
            let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
        }
        InterruptWait
    }
}

impl Drop for InterruptWait {
    fn drop(&mut self) {
        for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
            // SAFETY: back to the default action.
            let _ = unsafe {
                nix::sys::signal::sigaction(
                    sig,
                    &nix::sys::signal::SigAction::new(
                        nix::sys::signal::SigHandler::SigDfl,
                        nix::sys::signal::SaFlags::empty(),
                        nix::sys::signal::SigSet::empty(),
                    ),
                )
            };
        }
    }
}

/// Words of `text` in lines of at most `cells` terminal cells (a word longer than that on a
/// line of its own).
fn wrap(text: &str, cells: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let wanted =
            crate::text::width(&line) + usize::from(!line.is_empty()) + crate::text::width(word);
        if !line.is_empty() && wanted > cells {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The table as the notes lay it out, each row's live value under it, then what the notes do
/// not say, then the check. Fits 80 columns; bold headings on a terminal.
fn human(out: &mut impl Write, name: &str, lang: Lang, built: &Built) -> io::Result<()> {
    let tty = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let bold = |s: &str| {
        if tty {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    for line in wrap(lang.t(&format!("{name}.title")), 80) {
        writeln!(out, "{}", bold(&line))?;
    }
    let notes = format!(
        "{}: {}",
        lang.t("notes.label"),
        lang.t(&format!("{name}.notes"))
    );
    for line in wrap(&notes, 80) {
        writeln!(out, "{line}")?;
    }
    let running = if name == "nat" {
        "running.nat"
    } else {
        "running"
    };
    for line in wrap(lang.t(running), 80) {
        writeln!(out, "{line}")?;
    }
    if let Some(path) = &built.replayed {
        let text = lang.f("replayed", &[("file", &crate::text::escape(path))]);
        for line in wrap(&text, 80) {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "{}", lang.t("head"))?;
    const INDENT: usize = 23;
    for row in &built.rows {
        // `①     socket()`; a longer step (`3-way ①`, `1024–49151`) takes the space it needs,
        // and a lead wider than the column gets a line of its own.
        let step = if crate::text::width(&row.step) < 6 {
            crate::text::pad(&row.step, 6)
        } else {
            format!("{} ", row.step)
        };
        let lead = format!("{step}{}", row.call);
        let notes = wrap(&crate::text::escape(&row.notes), 80 - INDENT);
        let mut heads = vec![lead.as_str()];
        if crate::text::width(&lead) >= INDENT {
            writeln!(out, "{lead}")?;
            heads.clear();
        }
        for (i, line) in notes.iter().enumerate() {
            let head = heads.get(i).copied().unwrap_or("");
            writeln!(out, "{}{line}", crate::text::pad(head, INDENT))?;
        }
        // Values a run (or a recording anyone wrote) carried: escaped like every name.
        for (i, line) in wrap(&crate::text::escape(&row.live), 80 - INDENT - 2)
            .iter()
            .enumerate()
        {
            let arrow = if i == 0 { "→ " } else { "  " };
            writeln!(out, "{:INDENT$}{arrow}{line}", "")?;
        }
    }
    if !built.beyond.is_empty() {
        writeln!(out)?;
        writeln!(out, "{}", bold(lang.t("beyond.title")))?;
        for text in &built.beyond {
            for (i, line) in wrap(&crate::text::escape(text), 80 - 2).iter().enumerate() {
                writeln!(out, "{}{line}", if i == 0 { "• " } else { "  " })?;
            }
        }
    }
    if !built.checks.is_empty() {
        writeln!(out)?;
        let bad: Vec<String> = built
            .checks
            .iter()
            .filter(|c| !c.ok())
            .map(|c| format!("{} (kernel {}, program {})", c.what, c.kernel, c.program))
            .collect();
        let text = if bad.is_empty() {
            lang.f("check.ok", &[("n", &built.checks.len())])
        } else {
            lang.f("check.bad", &[("what", &bad.join("; "))])
        };
        for line in wrap(&crate::text::escape(&text), 80) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// One record for the lesson, one per row (its live values as data), one per note beyond the
/// notes, one per check.
fn json_out(out: &mut impl Write, name: &str, lang: Lang, built: &Built) -> io::Result<()> {
    let head = json!({
        "type": "lesson",
        "lesson": name,
        "lang": lang.code(),
        "title": lang.t(&format!("{name}.title")),
        "notes": lang.t(&format!("{name}.notes")),
        "replayed_from": built.replayed,
    });
    safe_line(out, &head)?;
    for row in &built.rows {
        let record = json!({
            "type": "lesson_row",
            "lesson": name,
            "step": row.step,
            "call": row.call,
            "notes": row.notes,
            "live": row.live,
            "values": row.values,
        });
        safe_line(out, &record)?;
    }
    for text in &built.beyond {
        safe_line(
            out,
            &json!({"type": "lesson_note", "lesson": name, "text": text}),
        )?;
    }
    for c in &built.checks {
        let record = json!({
            "type": "lesson_check",
            "lesson": name,
            "what": c.what,
            "kernel": c.kernel,
            "program": c.program,
            "ok": c.ok(),
        });
        safe_line(out, &record)?;
    }
    Ok(())
}

/// One JSON record and its line end, with every string escaped as all of tracer's JSON is.
fn safe_line(out: &mut impl Write, record: &Value) -> io::Result<()> {
    crate::text::json::to_writer(&mut *out, record)?;
    writeln!(out)
}
