/* Holds a file it deleted: an fd (with an offset) and a private mapping of it. Prints
 * "<i> <checksum via fd> <checksum via mapping> <offset>" and keeps reading. */
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#define SZ (64 * 1024)
static uint64_t sum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    static unsigned char buf[SZ];
    for (int i = 0; i < SZ; i++) buf[i] = (unsigned char)(i * 7 + 3);
    int fd = open("ghost.dat", O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (fd < 0 || write(fd, buf, SZ) != SZ) return 1;
    unsigned char *m = mmap(0, SZ, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) return 2;
    unlink("ghost.dat");
    lseek(fd, 1234, SEEK_SET);
    for (unsigned long i = 0;; i++) {
        static unsigned char r[SZ];
        if (pread(fd, r, SZ, 0) != SZ) return 3;
        printf("%lu %016llx %016llx %ld\n", i, (unsigned long long)sum(r, SZ),
               (unsigned long long)sum(m, SZ), (long)lseek(fd, 0, SEEK_CUR));
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
