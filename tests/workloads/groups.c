/* Process groups and sessions inside one tree: child A leads a group, its sibling B joins A's
 * group (as in a shell pipeline), B's child D starts a new session, and D's child E leads its
 * own group there. The root prints a counter. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pid_t a = fork();
    if (a == 0) { setpgid(0, 0); for (;;) pause(); }
    setpgid(a, a);
    pid_t b = fork();
    if (b == 0) {
        setpgid(0, a);
        if (fork() == 0) {
            setsid();
            if (fork() == 0) { setpgid(0, 0); for (;;) pause(); }
            for (;;) pause();
        }
        for (;;) pause();
    }
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
