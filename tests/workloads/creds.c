/* Drops to nobody with supplementary groups, a umask, lower limits, a nice value, an
 * oom_score_adj, a personality flag and no_new_privs, then counts. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (f) { fputs("300", f); fclose(f); }
    umask(027);
    struct rlimit rl = {256, 512};
    setrlimit(RLIMIT_NOFILE, &rl);
    setpriority(PRIO_PROCESS, 0, 5);
    personality(ADDR_NO_RANDOMIZE);
    gid_t groups[] = {4, 24};
    if (setgroups(2, groups) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) return 1;
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu %d %d\n", i, (int)getuid(), (int)getgid());
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
