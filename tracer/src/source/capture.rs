//! Captures: what a run read, in the order it read it, in a versioned file that replays
//! through the same pipeline offline, as any user, on any machine — for a bug report or a
//! lesson, the way people share a pcap.
//!
//! A capture is the magic line `tracer capture\n`, then frames: a tag byte, the payload's
//! length (u32, little-endian) and the payload. The first frame is the [`Header`] (JSON: the
//! format version, tracer's and the kernel's versions, the record sizes, the clock, the hooks,
//! what was selected, the start-up snapshot). Then, as they happened: batches of ring records
//! (the raw `SockEvent` and `NatEvent` bytes), conntrack events, ticks, and every answer the
//! agent got from the system while it ran (time, loss counters, port ranges, …), and a last
//! frame when the run ended. Replaying gives the stage the same inputs in the same order, so
//! it prints the same bytes.
use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use serde::{Deserialize, Serialize};
use tracer_common::{NatEvent, SockEvent, NAT_EVENT_SIZE, SOCK_EVENT_SIZE, SOCK_EVENT_SIZE_V1};

use crate::{
    error::{Error, Result},
    model::{
        evicted::Evicted,
        nat::{CtEvent, GoneNetns},
        snapshot::Snapshot,
    },
};

const MAGIC: &[u8] = b"tracer capture\n";
/// The format's version: a reader refuses others (bump it when a frame's meaning changes).
pub const VERSION: u32 = 1;
/// A frame larger than this is damage, not data (a batch is at most 4,096 records).
const MAX_FRAME: u32 = 64 << 20;

/// What a capture says about the run that made it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// The tracer that recorded it.
    pub tracer: String,
    /// `uname -r` of the machine it was recorded on.
    pub kernel: String,
    /// Record sizes, so a capture from a different layout is refused rather than misread.
    pub sock_record_size: usize,
    pub nat_record_size: usize,
    /// realtime − monotonic at the start, ns: kernel timestamps → wall-clock time.
    pub clock_offset_ns: i128,
    /// The hooks attached.
    pub hooks: Vec<String>,
    /// The user-space side of the selection: `--pid` given, `--comm`.
    pub by_pid: bool,
    pub comm: Option<String>,
    /// NAT was watched too, and its bindings came from conntrack events (no eBPF).
    pub nat: bool,
    pub nat_fallback: bool,
    /// The sockets that predated the run (already narrowed to the selection).
    pub snapshot: Option<Snapshot>,
    /// The recording kernel's names for drop and reset reasons (another kernel numbers them
    /// differently).
    #[serde(default)]
    pub reasons: Option<crate::model::health::ReasonNames>,
}

/// An answer the system gave while the run went on, one per question asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    Now(u64),
    Lost(u64),
    Evicted(Evicted),
    /// A namespace's port range (the question's namespace with it, so a replay that shows
    /// other events than the live run still finds it).
    PortRange(u32, Option<(u16, u16)>),
    Gone(Vec<u32>),
    Sockets(Option<Snapshot>),
    AnyAlive(bool),
    /// A binding's kernel counters, as their raw bytes.
    NatCounters(Option<Vec<u8>>),
    NatNamed(Vec<(u32, String)>),
    NatTick(Vec<GoneNetns>),
    NatLost(u64),
    NatEvictedSeen(u64),
    NatTotals(Option<[(u64, u64); 3]>),
    /// Runs of the health hooks the kernel skipped so far.
    HealthSkipped(u64),
    /// The listeners read (queues, backlogs, drops), and the namespaces that could be read.
    Listeners(Vec<u32>, Vec<crate::model::snapshot::SnapSocket>),
    /// The container of a cgroup (the question's cgroup with it).
    Container(u64, Option<crate::model::container::Container>),
    /// The ports the container runtime publishes (written when they change).
    Published(crate::model::mapping::PublishedPorts),
}

/// One step of a run.
#[derive(Clone, Debug)]
pub enum Frame {
    Header(Box<Header>),
    /// Socket events and NAT binding records, read together.
    Batch(Vec<SockEvent>, Vec<NatEvent>),
    Conntrack(CtEvent),
    Tick,
    Answer(Answer),
    /// The run ended; this many ring records could not be decoded.
    Finish {
        undecodable: u64,
    },
}

const TAG_HEADER: u8 = b'H';
const TAG_BATCH: u8 = b'B';
const TAG_CONNTRACK: u8 = b'C';
const TAG_TICK: u8 = b'T';
const TAG_ANSWER: u8 = b'A';
const TAG_FINISH: u8 = b'F';

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain data types cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

impl Frame {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Header(h) => (TAG_HEADER, json(h)),
            Frame::Batch(socks, nats) => {
                let mut out = Vec::with_capacity(
                    8 + socks.len() * SOCK_EVENT_SIZE + nats.len() * NAT_EVENT_SIZE,
                );
                out.extend_from_slice(&(socks.len() as u32).to_le_bytes());
                out.extend_from_slice(&(nats.len() as u32).to_le_bytes());
                for ev in socks {
                    out.extend_from_slice(bytemuck::bytes_of(ev));
                }
                for ev in nats {
                    out.extend_from_slice(bytemuck::bytes_of(ev));
                }
                (TAG_BATCH, out)
            }
            Frame::Conntrack(ev) => (TAG_CONNTRACK, json(ev)),
            Frame::Tick => (TAG_TICK, Vec::new()),
            Frame::Answer(a) => (TAG_ANSWER, json(a)),
            Frame::Finish { undecodable } => (TAG_FINISH, undecodable.to_le_bytes().to_vec()),
        }
    }

    /// `sock_size`: the socket records' size in this capture (this layout's or the one
    /// before it).
    fn decode(tag: u8, payload: &[u8], sock_size: usize) -> std::result::Result<Frame, String> {
        let from_json = |what: &str| format!("a damaged {what} frame");
        Ok(match tag {
            TAG_HEADER => Frame::Header(
                serde_json::from_slice(payload)
                    .map_err(|e| format!("{} ({e})", from_json("header")))?,
            ),
            TAG_BATCH => decode_batch(payload, sock_size)?,
            TAG_CONNTRACK => Frame::Conntrack(
                serde_json::from_slice(payload).map_err(|_| from_json("conntrack"))?,
            ),
            TAG_TICK => Frame::Tick,
            TAG_ANSWER => {
                let answer: Answer =
                    serde_json::from_slice(payload).map_err(|_| from_json("answer"))?;
                if let Answer::PortRange(_, Some((lo, hi))) = answer {
                    if lo > hi {
                        return Err("a port range whose low end is above its high end".into());
                    }
                }
                Frame::Answer(answer)
            }
            TAG_FINISH => Frame::Finish {
                undecodable: u64::from_le_bytes(
                    payload.try_into().map_err(|_| from_json("finish"))?,
                ),
            },
            other => return Err(format!("an unknown frame tag {other:#04x}")),
        })
    }
}

fn decode_batch(payload: &[u8], sock_size: usize) -> std::result::Result<Frame, String> {
    let damaged = || "a damaged batch frame".to_string();
    let count = |at: usize| -> std::result::Result<usize, String> {
        let bytes: [u8; 4] = payload
            .get(at..at + 4)
            .ok_or_else(damaged)?
            .try_into()
            .map_err(|_| damaged())?;
        Ok(u32::from_le_bytes(bytes) as usize)
    };
    let (socks, nats) = (count(0)?, count(4)?);
    let expected = socks
        .checked_mul(sock_size)
        .and_then(|s| {
            nats.checked_mul(NAT_EVENT_SIZE)
                .and_then(|n| s.checked_add(n))
        })
        .and_then(|n| n.checked_add(8));
    if expected != Some(payload.len()) {
        return Err(damaged());
    }
    let body = &payload[8..];
    let (sock_bytes, nat_bytes) = body.split_at(socks * sock_size);
    // Through the live decoder: a record the ring could not have held is refused here too.
    // A record of the layout before `cgroup` was added: zeros for it (no cgroup known).
    let socks = sock_bytes
        .chunks_exact(sock_size)
        .map(|record| {
            let mut full = [0u8; SOCK_EVENT_SIZE];
            full[..record.len()].copy_from_slice(record);
            crate::source::decode(&full)
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("a batch with a bad record ({e})"))?;
    Ok(Frame::Batch(
        socks,
        nat_bytes
            .chunks_exact(NAT_EVENT_SIZE)
            .map(bytemuck::pod_read_unaligned)
            .collect(),
    ))
}

/// Writes a capture. The first write error is kept (and reported by [`CaptureWriter::check`]);
/// later frames are dropped.
pub struct CaptureWriter {
    out: BufWriter<File>,
    error: Option<io::Error>,
}

impl CaptureWriter {
    /// Creates `path`, readable by its owner only, and writes the magic and the header. The
    /// path is the user's and tracer runs as root: never an existing file or a symlink, and
    /// with `as_user` (the user behind sudo: uid, gid) the file is created with that user's
    /// file-system identity, so a directory on the way that a symlink points somewhere only
    /// root may write is refused, and the capture belongs to that user.
    pub fn create(path: &Path, header: &Header, as_user: Option<(u32, u32)>) -> Result<Self> {
        let file = create_users_file(path, as_user)
            .map_err(|e| Error::io(format!("creating capture {}", path.display()), e))?;
        Self::start(file, header)
    }
}

/// Creates `path` for writing, readable by its owner only: never an existing file or a
/// symlink (the path is the user's and tracer runs as root), and with `as_user` (the user
/// behind sudo: uid, gid) created with that user's file-system identity, so the file belongs
/// to that user and a directory only root may write is refused.
pub fn create_users_file(path: &Path, as_user: Option<(u32, u32)>) -> io::Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match as_user {
        Some((uid, gid)) => {
            use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
            // Per thread, and only for this open: the fs ids (and with them the capabilities
            // that override file permissions) come back right after.
            let old_gid = setfsgid(Gid::from_raw(gid));
            let old_uid = setfsuid(Uid::from_raw(uid));
            let opened = open();
            setfsuid(old_uid);
            setfsgid(old_gid);
            opened
        }
        None => open(),
    }
}

/// The user behind sudo (`SUDO_UID`, `SUDO_GID`), when not root: files tracer writes for
/// them (captures, lesson recordings) are created as them.
pub fn sudo_user() -> Option<(u32, u32)> {
    let id = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    match (id("SUDO_UID")?, id("SUDO_GID")?) {
        (0, _) => None,
        ids => Some(ids),
    }
}

impl CaptureWriter {
    /// The magic and the header, at the start of `file`.
    fn start(file: File, header: &Header) -> Result<Self> {
        let mut writer = CaptureWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            error: None,
        };
        if let Err(e) = writer.out.write_all(MAGIC) {
            writer.error = Some(e);
        }
        writer.frame(&Frame::Header(Box::new(header.clone())));
        writer.check()?;
        Ok(writer)
    }

    pub fn frame(&mut self, frame: &Frame) {
        if self.error.is_some() {
            return;
        }
        let (tag, payload) = frame.encode();
        if payload.len() > MAX_FRAME as usize {
            self.error = Some(io::Error::other(format!(
                "a {} byte frame is over the format's {} MiB limit (narrow what is watched: --port, --pid, --netns)",
                payload.len(),
                MAX_FRAME >> 20
            )));
            return;
        }
        let written = self
            .out
            .write_all(&[tag])
            .and_then(|_| self.out.write_all(&(payload.len() as u32).to_le_bytes()))
            .and_then(|_| self.out.write_all(&payload));
        if let Err(e) = written {
            self.error = Some(e);
        }
    }

    /// Fails with the first write error, if there was one.
    pub fn check(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(Error::io("writing the capture", e)),
            None => Ok(()),
        }
    }

    /// Flushes to the file (at the end of the run).
    pub fn finish(&mut self) -> Result<()> {
        if let Err(e) = self.out.flush() {
            self.error.get_or_insert(e);
        }
        self.check()
    }
}

/// Reads a capture, frame by frame.
pub struct CaptureReader {
    input: BufReader<File>,
    /// Frames read so far (for error messages).
    frames: u64,
    name: String,
    /// The socket records' size (the header's).
    sock_size: usize,
}

impl CaptureReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<(Self, Header)> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(format!("opening capture {name}"), e))?;
        let mut reader = CaptureReader {
            input: BufReader::with_capacity(256 * 1024, file),
            frames: 0,
            name,
            sock_size: SOCK_EVENT_SIZE,
        };
        let mut magic = [0u8; MAGIC.len()];
        if reader.input.read_exact(&mut magic).is_err() || magic != MAGIC {
            return Err(reader.damaged("it does not start like a tracer capture"));
        }
        let header = match reader.next_frame()? {
            Some(Frame::Header(h)) => *h,
            _ => return Err(reader.damaged("it has no header")),
        };
        if header.version != VERSION {
            return Err(reader.damaged(&format!(
                "it is format version {} and this tracer reads version {VERSION}",
                header.version
            )));
        }
        if header.clock_offset_ns.unsigned_abs() > u64::MAX as u128 {
            return Err(reader.damaged("its clock offset is out of range"));
        }
        if let Some(ns) = header
            .snapshot
            .iter()
            .flat_map(|s| &s.namespaces)
            .find(|ns| ns.port_range.is_some_and(|(lo, hi)| lo > hi))
        {
            return Err(reader.damaged(&format!("namespace {} has an empty port range", ns.inode)));
        }
        let sock_size_known =
            [SOCK_EVENT_SIZE, SOCK_EVENT_SIZE_V1].contains(&header.sock_record_size);
        if !sock_size_known || header.nat_record_size != NAT_EVENT_SIZE {
            return Err(reader.damaged(&format!(
                "its records are {}/{} bytes and this tracer's are {SOCK_EVENT_SIZE}/{NAT_EVENT_SIZE} (recorded by tracer {})",
                header.sock_record_size, header.nat_record_size, header.tracer
            )));
        }
        reader.sock_size = header.sock_record_size;
        Ok((reader, header))
    }

    /// The next frame, or None at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let mut head = [0u8; 5];
        match self.input.read_exact(&mut head[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading capture {}", self.name), e)),
            Ok(()) => {}
        }
        // A recording cut short (tracer killed) ends inside a frame: the end of what there is.
        if self.input.read_exact(&mut head[1..]).is_err() {
            return Ok(None);
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            return Err(self.damaged(&format!("a frame claims {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        if self.input.read_exact(&mut payload).is_err() {
            return Ok(None);
        }
        self.frames += 1;
        Frame::decode(head[0], &payload, self.sock_size)
            .map(Some)
            .map_err(|why| self.damaged(&why))
    }

    /// A capture that cannot be read further, and why.
    pub fn damaged(&self, why: &str) -> Error {
        Error::Invalid(format!(
            "capture {}: cannot replay it: {why} (frame {})",
            crate::text::escape(&self.name),
            self.frames + 1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::kind;

    fn header() -> Header {
        Header {
            version: VERSION,
            tracer: "test".into(),
            kernel: "test".into(),
            sock_record_size: SOCK_EVENT_SIZE,
            nat_record_size: NAT_EVENT_SIZE,
            clock_offset_ns: -5,
            hooks: vec!["hook".into()],
            by_pid: false,
            comm: None,
            nat: false,
            nat_fallback: false,
            snapshot: None,
            reasons: None,
        }
    }

    #[test]
    fn frames_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let ev = SockEvent {
            kind: kind::BIND,
            lport: 8080,
            ..Default::default()
        };
        let mut w = CaptureWriter::create(&path, &header(), None).unwrap();
        w.frame(&Frame::Batch(vec![ev, ev], vec![NatEvent::default()]));
        w.frame(&Frame::Tick);
        w.frame(&Frame::Answer(Answer::PortRange(7, Some((1, 2)))));
        w.frame(&Frame::Finish { undecodable: 3 });
        w.finish().unwrap();
        let (mut r, h) = CaptureReader::open(&path).unwrap();
        assert_eq!(h.clock_offset_ns, -5);
        assert!(
            matches!(r.next_frame().unwrap(), Some(Frame::Batch(s, n)) if s == [ev, ev] && n.len() == 1)
        );
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Tick)));
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Answer(Answer::PortRange(7, Some((1, 2)))))
        ));
        assert!(matches!(
            r.next_frame().unwrap(),
            Some(Frame::Finish { undecodable: 3 })
        ));
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn refuses_an_existing_file_and_damaged_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, b"x").unwrap();
        assert!(CaptureWriter::create(&path, &header(), None).is_err());
        let e = CaptureReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("does not start like a tracer capture"), "{e}");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[b'B', 255, 255, 255, 255]);
        std::fs::write(&path, &bytes).unwrap();
        let e = CaptureReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("claims"), "{e}");
    }
}
