/* Keeps an exited child unreaped (a zombie) until SIGUSR1, then reaps it and prints its exit
 * status; prints a counter meanwhile. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <time.h>
#include <sys/wait.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    pid_t c = fork();
    if (c == 0) _exit(7);
    printf("child %d\n", (int)c);
    for (unsigned long i = 0;; i++) {
        if (go) {
            int st = 0;
            pid_t r = waitpid(c, &st, 0);
            printf("reaped %d status %d\n", (int)r, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            go = 0;
        }
        printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
