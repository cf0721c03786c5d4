//! Running a short piece of code inside another network namespace without moving the caller.
//!
//! A socket belongs for its whole life to the network namespace it was created in, whatever
//! the creating thread does afterwards. So a socket for another namespace is made by a
//! short-lived thread that `setns(fd, CLONE_NEWNET)`s into it, creates the socket and ends: the
//! caller never changes namespace, and other threads of a multithreaded caller are not
//! affected (`setns` of a network namespace is per thread, unlike a mount or user namespace).
//! Entering needs `CAP_SYS_ADMIN` over the namespace's owning user namespace; a file that is
//! no network namespace is `EINVAL`.

use std::io;
use std::os::fd::BorrowedFd;

/// Runs `f` on a thread that has entered the network namespace `ns` (an nsfs file:
/// `/proc/PID/ns/net`, `/run/netns/NAME`) and returns its result.
pub fn in_netns<T: Send>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("stasis-netns".into())
            .spawn_scoped(s, move || -> io::Result<T> {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("netns helper thread panicked"))?
    })
}
