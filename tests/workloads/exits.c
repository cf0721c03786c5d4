/* Counts to 40 (20 ms apart) and exits with status 3. */
#include <stdio.h>
#include <time.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < 40; i++) {
        printf("%d\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 3;
}
