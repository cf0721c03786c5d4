//! Tasks: their core (registers, signals, credentials, timers) and seccomp filters, each file
//! holding both the dump and the restore of its part.

pub mod arch;
pub(crate) mod core;
pub(crate) mod creds;
pub(crate) mod remote;
pub mod seccomp;
pub(crate) mod sigframe;
pub(crate) mod signals;
pub(crate) mod thread;
pub(crate) mod timers;

/// Why the core of a task (threads, signals, credentials, timers, seccomp) could not be dumped
/// or restored. Dump errors say `pid`, restore errors `task`, as the rest of each side does.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("pid {pid}: SCHED_DEADLINE scheduling on thread {tid} is not supported yet")]
    SchedDeadline { pid: u32, tid: u32 },
    #[error("pid {pid}: seccomp mode {mode} on thread {tid} is not supported yet")]
    SeccompStrict { pid: u32, tid: u32, mode: u32 },
    #[error("pid {pid}: the seccomp filters of thread {tid}")]
    DumpSeccomp {
        pid: u32,
        tid: u32,
        #[source]
        source: seccomp::SeccompError,
    },
    #[error("pid {pid}: a {which} directory deleted while in use ({path}) is not supported yet")]
    DeletedDir {
        pid: u32,
        which: &'static str,
        path: String,
    },
    #[error("pid {pid}: cannot read {path}")]
    Read {
        pid: u32,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid}: /proc/{pid}/{file} holds {value:?}, not a number")]
    Parse {
        pid: u32,
        file: &'static str,
        value: String,
    },
    #[error("pid {pid}: {call} on thread {tid} failed")]
    Syscall {
        pid: u32,
        tid: u32,
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address range for the trampoline in the dumped address space of task {pid}")]
    NoTrampolineRange { pid: u32 },
    #[error("task {pid}: POSIX timers need PR_TIMER_CREATE_RESTORE_IDS (Linux 6.16 or later)")]
    TimerIdsUnsupported { pid: u32 },
    #[error("task {pid}: thread {tid} came back as {got}")]
    ThreadTid { pid: u32, tid: u32, got: u32 },
    #[error("task {pid}: new thread {tid} exited ({status:#x})")]
    ThreadExited { pid: u32, tid: u32, status: i32 },
    #[error("task {pid}: thread {tid}: scheduling policy {policy} priority {prio}")]
    Sched {
        pid: u32,
        tid: u32,
        policy: i32,
        prio: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("task {pid}: thread {tid}: nice value {nice}")]
    Nice {
        pid: u32,
        tid: u32,
        nice: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("task {pid}: thread {tid}: cannot read its current credentials")]
    ThreadStatus {
        pid: u32,
        tid: u32,
        #[source]
        source: crate::proc::ProcError,
    },
    #[error("task {pid}: the seccomp filters of thread {tid}")]
    RestoreSeccomp {
        pid: u32,
        tid: u32,
        #[source]
        source: seccomp::SeccompError,
    },
    #[error("cannot read {path} (needed to set capabilities)")]
    CapLastCap {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}
