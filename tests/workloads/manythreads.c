/* N threads (argv[1], default 8) count, each on its own counter; every 20 ms the main thread
 * prints the sum: "<n> <sum>". The sum only grows while every thread runs. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long per[64];
static void *worker(void *arg) {
    long id = (long)arg;
    for (;;) {
        per[id]++;
        usleep(1000);
    }
    return 0;
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 8;
    if (n < 1 || n > 64) n = 8;
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t;
    for (long i = 0; i < n; i++) pthread_create(&t, 0, worker, (void *)i);
    for (unsigned long line = 0;; line++) {
        unsigned long sum = 0;
        for (long i = 0; i < n; i++) sum += per[i];
        printf("%lu %lu\n", line, sum);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
