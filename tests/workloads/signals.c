/* A periodic ITIMER_REAL drives a SIGALRM handler; a POSIX timer drives SIGUSR2; SIGUSR1 is
 * handled on an alternate stack. Prints "<alarms> <usr2> <usr1>" on every SIGALRM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>
static volatile sig_atomic_t alarms, usr1, usr2;
static void on_alarm(int s) { (void)s; alarms++; }
static void on_usr1(int s) { (void)s; usr1++; }
static void on_usr2(int s) { (void)s; usr2++; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    static char alt[65536];
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt};
    sigaltstack(&ss, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm; sigaction(SIGALRM, &sa, 0);
    sa.sa_handler = on_usr1; sa.sa_flags = SA_ONSTACK; sigaction(SIGUSR1, &sa, 0);
    sa.sa_handler = on_usr2; sa.sa_flags = 0; sigaction(SIGUSR2, &sa, 0);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, 0);
    timer_t t;
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_SIGNAL; ev.sigev_signo = SIGUSR2;
    timer_create(CLOCK_MONOTONIC, &ev, &t);
    struct itimerspec its = {{0, 40000000}, {0, 40000000}};
    timer_settime(t, 0, &its, 0);
    int last = -1;
    for (;;) {
        pause();
        if (alarms != last) { last = alarms; printf("%d %d %d\n", (int)alarms, (int)usr2, (int)usr1); }
    }
}
