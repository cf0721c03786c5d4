/* Sessions as a container's processes leave them. The root forks "early" and only then calls
 * setsid, so early stays in the session the root was started in (if the root led one
 * already, its setsid fails and early shares it); "leader" forks "born" and then calls
 * setsid, so born stays in the root's session. With the argument "ns" (the root is
 * the init of a pid namespace) also: "daemon", double-forked by a session leader that exited
 * (its session and group are led by no one, it was reparented to the init), and "orphan",
 * whose parent exited while its session's leader "keeper" lives on.
 * Every task prints "<name> <pid> <ppid> <pgid> <sid> <n>" every 50 ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Prints once reparented to the init (pid 1 of the namespace), as it stays. */
static void run_orphaned(const char *name);

static void run(const char *name) {
    for (unsigned long n = 0;; n++) {
        printf("%s %d %d %d %d %lu\n", name, getpid(), getppid(), getpgid(0), getsid(0), n);
        usleep(50000);
    }
}

static void run_orphaned(const char *name) {
    while (getppid() != 1)
        usleep(1000);
    run(name);
}

int main(int argc, char **argv) {
    int ns = argc > 1 && strcmp(argv[1], "ns") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fork() == 0)
        run("early");
    setsid();
    if (fork() == 0) {
        if (fork() == 0)
            run("born");
        if (setsid() < 0)
            return 1;
        run("leader");
    }
    if (ns) {
        pid_t gone = fork();
        if (gone == 0) {
            setsid();
            if (fork() == 0)
                run_orphaned("daemon");
            _exit(0);
        }
        waitpid(gone, NULL, 0);
        if (fork() == 0) {
            setsid();
            pid_t mid = fork();
            if (mid == 0) {
                if (fork() == 0)
                    run_orphaned("orphan");
                _exit(0);
            }
            waitpid(mid, NULL, 0);
            run("keeper");
        }
    }
    run("root");
}
