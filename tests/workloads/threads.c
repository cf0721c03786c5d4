/* Four threads count in lock step through a mutex; a value lives in an SSE register across
 * the loop. Prints "<total> <xmm-check>" every 20 ms from the main thread. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <time.h>
#include <immintrin.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long total, per[4];
static void *worker(void *arg) {
    long id = (long)arg;
    __m128d v = _mm_set1_pd(1.5 * (id + 1));
    for (;;) {
        pthread_mutex_lock(&mu);
        total++; per[id]++;
        pthread_mutex_unlock(&mu);
        v = _mm_add_pd(v, _mm_set1_pd(0.0));
        double d[2]; _mm_storeu_pd(d, v);
        if (d[0] != 1.5 * (id + 1)) { printf("XMM BAD %ld\n", id); }
        usleep(1000);
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (;;) {
        pthread_mutex_lock(&mu);
        printf("%lu %lu %lu %lu %lu\n", total, per[0], per[1], per[2], per[3]);
        pthread_mutex_unlock(&mu);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
