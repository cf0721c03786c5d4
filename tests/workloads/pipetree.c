/* A ring of 4 processes joined by pipes passes a token that each increments; the root prints
 * it. Also a child whose parent is a child (3 levels). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>
#define N 4
int main(void) {
    int p[N][2];
    for (int i = 0; i < N; i++) if (pipe(p[i])) return 1;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < N; i++) {
        if (fork() == 0) {
            if (i == N - 1 && fork() == 0) { for (;;) pause(); } /* a grandchild */
            unsigned long tok;
            for (;;) {
                if (read(p[i - 1][0], &tok, sizeof tok) != sizeof tok) _exit(2);
                tok++;
                if (write(p[i][1], &tok, sizeof tok) != sizeof tok) _exit(3);
            }
        }
    }
    unsigned long tok = 0;
    for (;;) {
        tok++;
        if (write(p[0][1], &tok, sizeof tok) != sizeof tok) return 4;
        if (read(p[N - 1][0], &tok, sizeof tok) != sizeof tok) return 5;
        printf("%lu\n", tok);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
