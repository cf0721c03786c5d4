/* A counter kept in a MAP_SHARED file mapping (the file sees every increment), next to
 * anonymous areas with madvise state: DONTFORK, DONTDUMP, HUGEPAGE, WIPEONFORK, RANDOM. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("counter.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 4096)) return 1;
    volatile uint64_t *c = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED) return 2;
    int advs[] = {MADV_DONTFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_WIPEONFORK, MADV_RANDOM};
    for (unsigned i = 0; i < sizeof advs / sizeof advs[0]; i++) {
        char *a = mmap(0, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED || madvise(a, 2 << 20, advs[i])) return 3;
        a[0] = (char)i;
    }
    for (;;) {
        (*c)++;
        printf("%llu\n", (unsigned long long)*c);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
