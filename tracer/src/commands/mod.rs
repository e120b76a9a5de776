//! One module per subcommand.
pub mod closed_stdout;
pub mod doctor;
pub mod floor;
pub mod lesson;
pub mod nat;
pub mod ports;
pub mod replay;
pub mod resolve;
pub mod trace;
pub mod watch;
pub mod who;
