/* Keeps SIGUSR1 and SIGRTMIN+1 blocked; signals sent to it stay pending. On SIGUSR2 it takes
 * them and prints "got <sig> <value>". Prints a counter meanwhile. */
#include <signal.h>
#include <stdio.h>
#include <time.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t held, wake;
    sigemptyset(&held);
    sigaddset(&held, SIGUSR1);
    sigaddset(&held, SIGRTMIN + 1);
    sigemptyset(&wake);
    sigaddset(&wake, SIGUSR2);
    sigset_t all = held;
    sigaddset(&all, SIGUSR2);
    sigprocmask(SIG_BLOCK, &all, NULL);
    struct timespec tick = {0, 20 * 1000 * 1000}, zero = {0, 0};
    for (unsigned long i = 0;; i++) {
        if (sigtimedwait(&wake, NULL, &tick) == SIGUSR2) {
            siginfo_t si;
            while (sigtimedwait(&held, &si, &zero) > 0)
                printf("got %d %d\n", si.si_signo, si.si_value.sival_int);
            printf("done\n");
        }
        printf("%lu\n", i);
    }
}
