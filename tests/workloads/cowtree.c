/* A parent and a child sharing 32 MiB of private anonymous memory copy-on-write, as after a
 * fork, except one page each has written since. Prints "child PID", then a counter; SIGUSR1
 * makes the process that gets it print "sum parent|child CHECKSUM" of the area. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define LEN (32u << 20)
static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }
static uint64_t sum(const unsigned char *p) {
    uint64_t s = 0;
    for (size_t i = 0; i < LEN; i++) s = s * 31 + p[i];
    return s;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned char *area = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 1;
    for (size_t i = 0; i < LEN; i++) area[i] = (unsigned char)(i % 251);
    signal(SIGUSR1, on_usr1);
    pid_t pid = fork();
    if (pid < 0) return 1;
    const char *who = pid == 0 ? "child" : "parent";
    if (pid == 0) memset(area, 0xab, 4096);
    else memset(area + LEN - 4096, 0xcd, 4096);
    if (pid > 0) printf("child %d\n", pid);
    for (unsigned long i = 0;; i++) {
        if (asked) {
            asked = 0;
            printf("sum %s %llu\n", who, (unsigned long long)sum(area));
        }
        if (pid > 0) printf("%lu\n", i);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
