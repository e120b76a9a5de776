//! The `tracer` binary: parse the command line, plan what each mode keeps of its privileges,
//! run the subcommand, report errors in one line (a closed stdout is not an error).
use clap::Parser;
use tracer::cli::{Cli, Command, NatTargets};
use tracer::commands::closed_stdout;
use tracer::commands::{nat, ports, trace, watch};
use tracer::kernel::nat_watch::NatPlaces;
use tracer::kernel::prereq::{self, Keep};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::ExecWhenReady {
        gate_fd,
        user,
        uid,
        gid,
        argv,
    } = &cli.command
    {
        let code = tracer::commands::trace::exec_when_ready(*gate_fd, (user, *uid, *gid), argv);
        return std::process::ExitCode::from(code as u8);
    }
    // Short-lived helper threads (entering a network namespace to read its port range or dump
    // its sockets) would each get a glibc malloc arena that keeps its memory after the thread
    // is gone; one arena keeps a long-running agent's memory flat.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // `serve` is a daemon: its log lines are its output.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        // Log lines can carry names any user chose: escaped on the way out, and without
        // tracing's own colours, so that no escape byte reaches the terminal from them.
        .with_writer(tracer::output::log::SafeStderr)
        .with_ansi(false)
        .init();
    match run(cli.command) {
        Ok(code) => std::process::ExitCode::from(code),
        // `tracer … | head`: the reader has what it wanted.
        Err(e) if closed_stdout::is_closed() && e.chain().any(closed_stdout::is_broken_pipe) => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // Each error message already names its cause (and may quote a name: escaped).
            eprintln!("tracer: {}", tracer::text::escape_log(&e.to_string()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand; returns the exit code.
fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Watch(args) => {
            let plan = watch::prepare(args.validate()?)?;
            let all = matches!(plan.config.nat, Some((NatTargets::All, _)));
            end_on_closed_stdout();
            runtime(Keep::watch(all))?.block_on(watch::run(plan))?;
        }
        Command::Serve(args) => {
            let plan = watch::prepare(args.validate()?)?;
            let all = matches!(plan.config.nat, Some((NatTargets::All, _)));
            runtime(Keep::watch(all))?.block_on(watch::run(plan))?;
        }
        Command::Ports(args) => {
            let plan = ports::prepare(args.validate()?)?;
            prereq::plan(Keep::ports_live());
            ports::run(plan)?;
        }
        Command::Trace(args) => {
            let config = trace::prepare(args.validate()?)?;
            let other_user = matches!(&config.target,
                trace::Target::Command { user, .. } if user.uid != 0);
            let runtime = runtime(Keep::trace(other_user))?;
            let code = runtime.block_on(trace::run(config))?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Command::ExecWhenReady { .. } => unreachable!("handled in main"),
        Command::Nat(args) => {
            let config = args.validate()?;
            if let (Some(agent), Some(who)) = (config.agent.clone(), config.who) {
                // A question for a running agent: no root, nothing loaded, and nothing of
                // root kept to talk to whatever listens there. None found is status 1, as
                // grep has it.
                prereq::plan(Keep::NOTHING);
                if let Err(e) = prereq::restrict_thread(Keep::NOTHING) {
                    eprintln!("tracer: dropping capabilities: {e}");
                    return Ok(2);
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let asked = tracer::commands::who::ask_agent(&agent, &who, config.json);
                return match runtime.block_on(asked) {
                    Ok(found) => Ok(u8::from(!found)),
                    // Not "nobody" (1): could not ask, as grep says 2.
                    Err(e) => {
                        eprintln!("tracer: {}", tracer::text::escape_log(&e.to_string()));
                        Ok(2)
                    }
                };
            }
            let plan = nat::prepare(config)?;
            let keep = match &plan.places {
                NatPlaces::All => Keep::nat(true, false),
                NatPlaces::Named(list) => {
                    Keep::nat(false, list.iter().any(|(_, p)| p.starts_with("/proc")))
                }
                NatPlaces::Host => Keep::nat(false, false),
            };
            end_on_closed_stdout();
            runtime(keep)?.block_on(nat::run(plan))?;
        }
        Command::Replay(args) => tracer::commands::replay::run(args.validate()?)?,
        Command::Doctor => tracer::commands::doctor::run()?,
        Command::Lesson(args) => {
            let code = tracer::commands::lesson::run(args.validate()?)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Command::LessonActor { scenario, report } => {
            let code = tracer::commands::lesson::actor::run(&scenario, &report);
            return Ok(code.clamp(0, 255) as u8);
        }
        Command::Floor { syscalls } => tracer::commands::floor::run(syscalls)?,
    }
    Ok(0)
}

/// Plans what this mode keeps once attached, and builds its runtime: one thread, plus
/// blocking-pool threads that hold no more than the plan from their first instruction.
fn runtime(keep: Keep) -> std::io::Result<tokio::runtime::Runtime> {
    prereq::plan(keep);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || {
            if let Err(e) = prereq::restrict_thread(keep) {
                tracing::warn!("blocking thread: dropping capabilities: {e}");
            }
        })
        .build()
}

/// `watch` and `nat` may print nothing for long: once stdout's reader is gone they stop as
/// on SIGTERM (detaching everything), and the next write's EPIPE ends them quietly. The
/// signal is sent only once the command handles it (before that it would kill tracer), and
/// again every 200 ms until tracer has exited, so one sent as the handler is being set up is
/// not lost.
fn end_on_closed_stdout() {
    closed_stdout::on_close(|| loop {
        if sigterm_handled() {
            // SAFETY: kill(2) on our own process, whose SIGTERM handler is in place.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
}

/// Whether SIGTERM has a handler (tokio's, set up by the command's main loop).
fn sigterm_handled() -> bool {
    // SAFETY: reads the current disposition only (no new action is given).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != libc::SIG_DFL
            && current.sa_sigaction != libc::SIG_IGN
    }
}
