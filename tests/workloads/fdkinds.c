/* Holds an eventfd (count 5, semaphore), a periodic timerfd, a signalfd for SIGUSR1, an epoll
 * watching all three, and a sealed memfd mapped shared and private (modified). epoll drives
 * everything: timer ticks print "tick <total>"; SIGUSR1 (through the signalfd) prints
 * "check ..." with what each object holds. The first line, "expect ...", is the same check. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
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
static int efd, mfd;
static unsigned char *shared, *priv;
static void check(const char *what) {
    uint64_t v;
    int reads = 0;
    while (read(efd, &v, 8) == 8) reads++;
    static unsigned char buf[SZ];
    pread(mfd, buf, SZ, 0);
    printf("%s eventfd=%d memfd=%016llx shared=%016llx private=%016llx seals=%d pos=%ld\n", what, reads,
           (unsigned long long)sum(buf, SZ), (unsigned long long)sum(shared, SZ),
           (unsigned long long)sum(priv, SZ), fcntl(mfd, F_GET_SEALS), (long)lseek(mfd, 0, SEEK_CUR));
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
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.events = EPOLLIN;
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 3;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
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
            }
        }
    }
}
