//! IPC objects: System V (shm, msg, sem) and POSIX message queues.

pub mod mqueue;
pub mod sysv;
