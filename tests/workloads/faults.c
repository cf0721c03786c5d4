/* A small tree with a bit of everything a dump writes: three threads count under a mutex, a
 * child echoes a token back over a pipe pair, 1000 bytes wait in a pipe nobody reads, a file
 * is appended to, a deleted file stays open, and 6 MiB of memory keep their checksum.
 * Prints "<line> <threads' total> <token> ok|BAD" every 20 ms. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define MIB 6
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long total;
static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        total++;
        pthread_mutex_unlock(&mu);
        usleep(1000);
    }
    return 0;
}
static uint64_t sum(const uint64_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
int main(void) {
    int to_child[2], from_child[2], idle[2];
    if (pipe(to_child) || pipe(from_child) || pipe(idle)) return 1;
    if (fork() == 0) {
        unsigned long tok;
        for (;;) {
            if (read(to_child[0], &tok, sizeof tok) != sizeof tok) _exit(2);
            tok++;
            if (write(from_child[1], &tok, sizeof tok) != sizeof tok) _exit(3);
        }
    }
    char junk[1000];
    memset(junk, 'j', sizeof junk);
    if (write(idle[1], junk, sizeof junk) != sizeof junk) return 4;
    int log = open("log.txt", O_WRONLY | O_CREAT | O_APPEND, 0600);
    int ghost = open("ghost.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (log < 0 || ghost < 0 || write(ghost, junk, sizeof junk) != sizeof junk) return 5;
    unlink("ghost.dat");
    size_t n = MIB * 1024 * 1024 / 8;
    uint64_t *p = malloc(n * 8), x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[i] = x; }
    uint64_t want = sum(p, n);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, worker, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned long tok = 0;
    for (unsigned long line = 0;; line++) {
        if (write(to_child[1], &tok, sizeof tok) != sizeof tok) return 6;
        if (read(from_child[0], &tok, sizeof tok) != sizeof tok) return 7;
        int ok = sum(p, n) == want;
        pthread_mutex_lock(&mu);
        unsigned long now = total;
        pthread_mutex_unlock(&mu);
        printf("%lu %lu %lu %s\n", line, now, tok, ok ? "ok" : "BAD");
        dprintf(log, "%lu\n", line);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
