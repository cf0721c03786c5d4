/* Listens on 127.0.0.1:<port>, accepts one client, then both sends and checks an endless byte
 * stream: byte i of each direction is pattern(i). Prints "rx <n> tx <n>" every 50 ms, and
 * "BAD at <offset>" if a byte is wrong. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static unsigned char pattern(uint64_t i) { return (unsigned char)(i * 7 + i / 251); }
static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int port = argc > 1 ? atoi(argv[1]) : 7777;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 8)) { perror("listen"); return 1; }
    printf("listening %d\n", port);
    int c = accept(ls, NULL, NULL);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c, F_SETFL, O_NONBLOCK);
    uint64_t rx = 0, tx = 0, last = 0;
    unsigned char buf[65536];
    for (;;) {
        struct pollfd p = {.fd = c, .events = POLLIN | POLLOUT};
        poll(&p, 1, 20);
        ssize_t n = read(c, buf, sizeof buf);
        if (n == 0) { printf("eof\n"); return 0; }
        for (ssize_t i = 0; i < n; i++, rx++)
            if (buf[i] != pattern(rx)) { printf("BAD at %llu\n", (unsigned long long)rx); return 2; }
        for (int i = 0; i < 4096; i++) buf[i] = pattern(tx + i);
        ssize_t w = write(c, buf, 4096);
        if (w > 0) tx += w;
        else if (w < 0 && errno != EAGAIN) { printf("write error %d\n", errno); return 3; }
        if (now_ms() - last >= 50) {
            last = now_ms();
            printf("rx %llu tx %llu\n", (unsigned long long)rx, (unsigned long long)tx);
        }
    }
}
