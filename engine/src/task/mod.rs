//! Tasks: their core (registers, signals, credentials, timers) and seccomp filters.

pub mod arch;
pub mod seccomp;
