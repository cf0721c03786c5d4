/* The init of a pid namespace (run under `unshare --pid --fork`) with a child that has a
 * thread: each prints the pid it sees and a counter, so a restore can be checked to keep the
 * namespace's pids (1, 2, and the thread's) and to go on counting. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *thread_main(void *arg) {
    (void)arg;
    for (long n = 0;; n++) {
        printf("thread %ld %ld\n", (long)syscall(SYS_gettid), n);
        usleep(100000);
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fork() == 0) {
        pthread_t t;
        pthread_create(&t, NULL, thread_main, NULL);
        for (long n = 0;; n++) {
            printf("child %d %d %ld\n", getpid(), getppid(), n);
            usleep(100000);
        }
    }
    for (long n = 0;; n++) {
        printf("init %d %ld\n", getpid(), n);
        usleep(100000);
    }
}
