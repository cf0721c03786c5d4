//! Namespaces the tree owns (IPC, UTS).

pub mod ipc;
pub mod uts;
