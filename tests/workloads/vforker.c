/* A parent blocked in vfork(2) until its child leaves: the child prints, then sleeps. A
 * parent in vfork cannot stop for a tracer until then. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("parent %d\n", getpid());
    if (vfork() == 0) {
        /* Only async-signal-safe calls in a vfork child: write and pause. */
        write(1, "child\n", 6);
        for (;;)
            pause();
    }
    printf("parent back\n");
    return 0;
}
