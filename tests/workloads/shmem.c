/* Parent and child share anonymous memory: the child increments a counter there, the parent
 * prints it together with its own private counter. */
#include <stdio.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
int main(void) {
    volatile unsigned long *shared = mmap(0, 4096 * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (fork() == 0) {
        for (;;) { shared[0]++; usleep(5000); }
    }
    for (unsigned long i = 0;; i++) {
        printf("%lu %lu\n", i, shared[0]);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
