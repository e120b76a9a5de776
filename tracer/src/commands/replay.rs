//! `tracer replay FILE`: a capture (`watch --record FILE`) through the same stage `watch`
//! runs, with the same output flags. Needs no root and no kernel: the capture holds every
//! record the run read and every answer it got from the system, so the output is the live
//! run's, byte for byte.
use std::io;

use crate::{
    cli::{GroupBy, ReplayConfig, WatchMode},
    commands::watch::stdout_sink,
    error::{Error, Result},
    model::{Clock, Filter},
    pipeline::{
        record,
        watch::{WatchSetup, WatchStage},
    },
    source::capture::CaptureReader,
};

pub fn run(config: ReplayConfig) -> Result<()> {
    let (mut reader, header) = CaptureReader::open(&config.file)?;
    let output = &config.output;
    let clock = Clock::with_offset(header.clock_offset_ns);
    if let Some(names) = header.reasons.clone() {
        crate::model::health::set_names(names);
    }
    let mut stage = WatchStage::new(WatchSetup {
        mode: WatchMode::Watch,
        filter: Filter::new(&output.events, header.by_pid, header.comm.as_deref()),
        group_by_remote: output.group_by == Some(GroupBy::Remote),
        process_filter: header.by_pid || header.comm.is_some(),
        nat: header.nat,
        who: None,
        nat_history: (0, 0),
        sink: stdout_sink(output.json, output.color, output.group_by.is_some()),
        scrape: None,
        hooks: header.hooks.clone(),
        snapshot: header.snapshot.clone(),
        clock,
    });
    match record::replay(&mut reader, &header, &mut stage) {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
