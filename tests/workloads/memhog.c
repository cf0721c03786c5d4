/* Fills N MiB with random data, then keeps verifying its checksum: "<iter> <checksum>". */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
static uint64_t sum(const uint64_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 16;
    size_t n = mib * 1024 * 1024 / 8;
    uint64_t *p = malloc(n * 8), x = 88172645463325252ull ^ (uint64_t)time(0);
    for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[i] = x; }
    uint64_t want = sum(p, n);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready %016llx\n", (unsigned long long)want);
    for (unsigned long it = 0;; it++) {
        uint64_t got = sum(p, n);
        printf("%lu %016llx %s\n", it, (unsigned long long)got, got == want ? "ok" : "BAD");
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
