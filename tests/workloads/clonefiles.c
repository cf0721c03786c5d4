/* A child made with clone(CLONE_FILES) but not as a thread: it shares the fd table. With the
 * argument "fs", clone(CLONE_FS) instead: it shares cwd, root and umask.
 * Prints "child PID", then a counter per line, with "fd100" once fd 100 is open: SIGUSR1
 * makes the child open it, which the parent sees only through a shared table. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static void on_usr1(int sig) {
    (void)sig;
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0 && fd != 100) { dup2(fd, 100); close(fd); }
}
static int child(void *arg) {
    (void)arg;
    signal(SIGUSR1, on_usr1);
    for (;;) pause();
    return 0;
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int flag = argc > 1 && strcmp(argv[1], "fs") == 0 ? CLONE_FS : CLONE_FILES;
    char *stack = malloc(65536);
    int pid = clone(child, stack + 65536, flag | SIGCHLD, 0);
    if (pid < 0) return 1;
    printf("child %d\n", pid);
    for (unsigned long i = 0;; i++) {
        printf("%lu%s\n", i, fcntl(100, F_GETFD) >= 0 ? " fd100" : "");
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
