/* Holds one fd of every kind stasis restores: an eventfd (count 5, semaphore), a periodic
 * timerfd, a signalfd for SIGUSR1, an inotify watch on its cwd, an epoll watching those four,
 * a sealed memfd mapped shared and private (modified), a flock and a POSIX lock, a pty pair,
 * a FIFO, a pipe and a unix socketpair with bytes buffered. epoll drives everything: timer
 * ticks print "tick <total>", a file created in the cwd prints "inotify <name>", and SIGUSR1
 * (through the signalfd) prints "check ..." with what each object holds and does. The first
 * line, "expect ...", is the same check. Each check leaves the objects as it found them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#define SZ 10000
static uint64_t sum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
static int efd, mfd, ptm, pts, fifo, pipe_r, pipe_w, sk[2];
/* Reads what `fd` holds (up to 64 bytes, non-blocking) into out, and writes it back through
 * `back`, so the next check finds the same bytes. */
static void take_and_restore(int fd, int back, char *out) {
    int n = read(fd, out, 63);
    out[n > 0 ? n : 0] = 0;
    if (n > 0) write(back, out, n);
}
static unsigned char *shared, *priv;
static void check(const char *what) {
    uint64_t v;
    int reads = 0;
    while (read(efd, &v, 8) == 8) reads++;
    static unsigned char buf[SZ];
    pread(mfd, buf, SZ, 0);
    /* The pty: what the master writes, the slave reads (canonical mode, one line). */
    write(ptm, "ping\n", 5);
    char pty[64] = "", fifo_b[64], pipe_b[64], sk0[64], sk1[64];
    for (int i = 0; i < 100 && read(pts, pty, 63) < 0; i++) usleep(10000);
    pty[strcspn(pty, "\n")] = 0;
    char echo[64];
    while (read(ptm, echo, sizeof echo) > 0) {} /* the echo */
    take_and_restore(fifo, fifo, fifo_b);
    take_and_restore(pipe_r, pipe_w, pipe_b);
    take_and_restore(sk[0], sk[1], sk0);
    take_and_restore(sk[1], sk[0], sk1);
    printf("%s eventfd=%d memfd=%016llx shared=%016llx private=%016llx seals=%d pos=%ld pty=%s "
           "fifo=%s pipe=%s unix=%s/%s\n", what, reads,
           (unsigned long long)sum(buf, SZ), (unsigned long long)sum(shared, SZ),
           (unsigned long long)sum(priv, SZ), fcntl(mfd, F_GET_SEALS), (long)lseek(mfd, 0, SEEK_CUR),
           pty, fifo_b, pipe_b, sk0, sk1);
    /* Put the count back for the next check. */
    v = 5;
    write(efd, &v, 8);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    efd = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, 0);
    mfd = memfd_create("stasis-test", MFD_ALLOW_SEALING);
    static unsigned char pat[SZ];
    for (int i = 0; i < SZ; i++) pat[i] = (unsigned char)(i * 31 + 1);
    write(mfd, pat, SZ);
    lseek(mfd, 1234, SEEK_SET);
    shared = mmap(0, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    priv = mmap(0, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
    priv[0] ^= 0xff;
    priv[9999] ^= 0x55;
    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    int ifd = inotify_init1(IN_NONBLOCK);
    inotify_add_watch(ifd, ".", IN_CREATE);
    int lk = open("flock", O_RDWR | O_CREAT, 0600);
    flock(lk, LOCK_EX);
    int pl = open("posix", O_RDWR | O_CREAT, 0600);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 5};
    fcntl(pl, F_SETLK, &fl);
    ptm = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
    grantpt(ptm);
    unlockpt(ptm);
    pts = open(ptsname(ptm), O_RDWR | O_NOCTTY | O_NONBLOCK);
    mkfifo("fifo", 0600);
    fifo = open("fifo", O_RDWR | O_NONBLOCK);
    write(fifo, "fifo-bytes", 10);
    int p[2];
    pipe2(p, O_NONBLOCK);
    pipe_r = p[0];
    pipe_w = p[1];
    write(pipe_w, "pipe-bytes", 10);
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sk);
    write(sk[0], "to-1", 4);
    write(sk[1], "to-0", 4);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.events = EPOLLIN;
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 3;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.u64 = 4;
    epoll_ctl(ep, EPOLL_CTL_ADD, ifd, &ev);
    check("expect");
    uint64_t total = 0;
    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 1000);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 2) {
                uint64_t t;
                if (read(tfd, &t, 8) == 8) total += t;
                printf("tick %llu\n", (unsigned long long)total);
            } else if (evs[i].data.u64 == 3) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si) check("check");
            } else if (evs[i].data.u64 == 4) {
                char b[4096];
                int len = read(ifd, b, sizeof b);
                for (int off = 0; off < len;) {
                    struct inotify_event *e = (struct inotify_event *)(b + off);
                    if (e->len) printf("inotify %s\n", e->name);
                    off += sizeof *e + e->len;
                }
            }
        }
    }
}
