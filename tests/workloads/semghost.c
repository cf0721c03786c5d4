/* A parent and its child share a file they deleted, as python's multiprocessing shares its
 * semaphores: a process-shared semaphore and a counter in a MAP_SHARED mapping of it, which
 * both bump under the semaphore; the parent also reads the file's tail through its fd.
 * The parent prints "<i> <shared count> <checksum of the tail via fd>" every 20 ms. */
#include <fcntl.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#define SZ (8 * 1024)
struct shared {
    sem_t sem;
    uint64_t count;
};
static uint64_t sum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
static void bump(struct shared *s) {
    if (sem_wait(&s->sem) != 0) _exit(4);
    s->count++;
    if (sem_post(&s->sem) != 0) _exit(5);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    static unsigned char buf[SZ];
    for (int i = 0; i < SZ; i++) buf[i] = (unsigned char)(i * 7 + 3);
    int fd = open("semghost.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, buf, SZ) != SZ) return 1;
    struct shared *s = mmap(0, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED) return 2;
    if (sem_init(&s->sem, 1, 1) != 0) return 3;
    s->count = 0;
    unlink("semghost.dat");
    struct timespec ts = {0, 20 * 1000 * 1000};
    if (fork() == 0) {
        for (;;) {
            bump(s);
            nanosleep(&ts, NULL);
        }
    }
    for (unsigned long i = 0;; i++) {
        static unsigned char r[SZ / 2];
        if (pread(fd, r, sizeof r, SZ / 2) != sizeof r) return 6;
        bump(s);
        printf("%lu %llu %016llx\n", i, (unsigned long long)s->count,
               (unsigned long long)sum(r, sizeof r));
        nanosleep(&ts, NULL);
    }
}
