//! stasis engine: checkpoint and restore of Linux process trees.
//!
//! Images are written in CRIU's format (see [`images`]), so CRIU's `crit` and every tool built on
//! go-criu can read them. The dump side is parasite-free: it reads state from `/proc`, ptrace and
//! `process_vm_readv`, and asks the task itself only for what no interface exposes, by injecting
//! single syscalls. Restore forks the tree with `clone3(set_tid)` and rebuilds every task by
//! syscalls injected through ptrace.
//!
//! Layout: one module per kind of kernel object, each holding both its dump and its restore
//! (`task`, `mm`, `files`, `net`, `ipc`, `ns`); `freeze` stops and releases the tree; `sys` is
//! the syscall seam; `dump` and `restore` only order the steps; `fault` is the tests' fault
//! injection seam.

pub mod cgroup;
pub mod dump;
pub mod fault;
pub mod files;
pub mod freeze;
pub mod images;
pub mod ipc;
pub mod mm;
pub mod net;
pub mod notify;
pub mod ns;
pub mod private;
pub mod proc;
pub mod restore;
pub mod sys;
pub mod task;
