/* A child made with clone(CLONE_FILES) but not as a thread: it shares the fd table. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int child(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char *stack = malloc(65536);
    if (clone(child, stack + 65536, CLONE_FILES | SIGCHLD, 0) < 0) return 1;
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
