/* Prints an increasing counter every 20 ms. */
#include <stdio.h>
#include <time.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
