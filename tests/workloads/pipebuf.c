/* 30000 bytes sit in a pipe between parent and child until the child gets SIGUSR1; then it
 * reads them and prints "child <bytes> <checksum>". The parent prints "want <checksum>" first,
 * then a counter. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#define N 30000
static uint64_t sum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    static unsigned char buf[N];
    for (int i = 0; i < N; i++) buf[i] = (unsigned char)(i * 13 + 7);
    int p[2];
    if (pipe(p)) return 1;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, NULL);
    printf("want %016llx\n", (unsigned long long)sum(buf, N));
    pid_t c = fork();
    if (c == 0) {
        close(p[1]);
        int sig;
        sigwait(&s, &sig);
        static unsigned char got[N];
        size_t n = 0;
        while (n < N) {
            ssize_t k = read(p[0], got + n, N - n);
            if (k <= 0) break;
            n += (size_t)k;
        }
        printf("child %zu %016llx\n", n, (unsigned long long)sum(got, n));
        for (;;) pause();
    }
    close(p[0]);
    if (write(p[1], buf, N) != N) return 2;
    printf("child-pid %d\n", (int)c);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
