//! One module per subcommand.
pub mod doctor;
pub mod ports;
pub mod watch;
