/* A child in seccomp strict mode (only read, write, exit and sigreturn allowed): it prints
 * "child PID", then "strict N" for each byte the parent sends it, which SIGUSR1 to the parent
 * makes it do. The parent prints a counter. */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static int to_child[2];
static void on_usr1(int sig) { (void)sig; (void)!write(to_child[1], "x", 1); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (pipe(to_child)) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0) return 1;
        char line[] = "strict 0\n";
        for (;;) {
            char c;
            if (read(to_child[0], &c, 1) != 1) syscall(SYS_exit, 1);
            line[7] = line[7] == '9' ? '0' : line[7] + 1;
            (void)!write(1, line, strlen(line));
        }
    }
    signal(SIGUSR1, on_usr1);
    printf("child %d\n", pid);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
