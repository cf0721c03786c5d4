//! Namespaces the tree owns (IPC, UTS, PID, network).

pub mod ipc;
pub mod mnt;
pub mod net;
pub mod pid;
pub mod time;
pub mod uts;
