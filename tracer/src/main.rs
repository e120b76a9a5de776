//! The `tracer` binary: parse the command line, run the subcommand, report errors in one line.
use clap::Parser;
use tracer::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::ExecWhenReady { gate_fd, argv } = &cli.command {
        let code = tracer::commands::trace::exec_when_ready(*gate_fd, argv);
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
    let mut exit_code = 0u8;
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result: anyhow::Result<()> = (|| {
        match cli.command {
            Command::Watch(args) => {
                let config = args.validate()?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(tracer::commands::watch::run(config))?;
            }
            Command::Serve(args) => {
                let config = args.validate()?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(tracer::commands::watch::run(config))?;
            }
            Command::Ports(args) => tracer::commands::ports::run(args.validate()?)?,
            Command::Trace(args) => {
                let config = args.validate()?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let code = runtime.block_on(tracer::commands::trace::run(config))?;
                exit_code = code.clamp(0, 255) as u8;
            }
            Command::ExecWhenReady { .. } => unreachable!("handled above"),
            Command::Nat(args) => {
                let config = args.validate()?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(tracer::commands::nat::run(config))?;
            }
            Command::Doctor => tracer::commands::doctor::run()?,
        }
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::from(exit_code),
        Err(e) => {
            // Each error message already names its cause.
            eprintln!("tracer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
