/* The main thread exits with pthread_exit while a second thread keeps counting. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static void *worker(void *arg) {
    (void)arg;
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    pthread_exit(0);
}
