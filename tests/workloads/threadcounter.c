/* A counter whose process has four more threads, each bumping a count of its own: made to
 * run as a container's init (pid 1 of its namespace), which a multi-threaded runtime (a JVM,
 * node, Go, python with a pool) is. Prints "<i>" every 20 ms from the main thread; a worker
 * that finds its count moved under it prints "BAD". */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static volatile unsigned long count[4];
static void *worker(void *arg) {
    long id = (long)arg;
    struct timespec ts = {0, 5 * 1000 * 1000};
    for (;;) {
        unsigned long before = count[id];
        count[id] = before + 1;
        nanosleep(&ts, NULL);
        if (count[id] != before + 1) printf("BAD %ld\n", id);
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, (void *)i);
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        nanosleep(&ts, NULL);
    }
}
