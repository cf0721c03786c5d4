//! stasis engine: checkpoint and restore of Linux process trees.
//!
//! Images are written in CRIU's format (see [`images`]), so CRIU's `crit` and every tool built on
//! go-criu can read them. The dump side is parasite-free: it reads state from `/proc`, ptrace and
//! `process_vm_readv`, and asks the task itself only for what no interface exposes, by injecting
//! single syscalls. Restore forks the tree with `clone3(set_tid)` and rebuilds every task by
//! syscalls injected through ptrace.

pub mod anonfd;
pub mod arch;
pub mod dump;
pub mod files;
pub mod images;
pub mod inet;
pub mod ipcns;
pub mod mem;
pub mod mqueue;
pub mod pages;
pub mod proc;
pub mod ptrace;
pub mod pty;
pub mod restore;
pub mod seccomp;
pub mod sys;
pub mod sysvipc;
pub mod unix;
pub mod utsns;
