/* The floor under P4a: a TCP round trip on loopback with nothing else in it.
 *
 * One process echoes N messages of SIZE bytes back over a TCP_NODELAY loopback connection, the
 * other times each send → receive. The echo side is pinned to CPU 0 and the timing side to CPU 1,
 * as the server and the load generator are in `make bench`. Mode "block" sleeps in recv (both
 * sides wake up per message, as a parked server does); mode "spin" polls with MSG_DONTWAIT.
 *
 * Build and run: cc -O2 -o loopback_rtt scripts/loopback_rtt.c && ./loopback_rtt block
 * Prints one line of JSON: {"mode": ..., "p50_us": ..., "p99_us": ...}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { N = 20000, SIZE = 200 };

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) perror("sched_setaffinity (continuing unpinned)");
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void recv_all(int fd, char *buf, int n, int spin) {
    int got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, spin ? MSG_DONTWAIT : 0);
        if (r > 0) got += r;
        else if (r == 0) exit(0);
        else if (errno != EAGAIN && errno != EINTR) { perror("recv"); exit(1); }
    }
}

static int by_value(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return d < 0 ? -1 : d > 0;
}

int main(int argc, char **argv) {
    int spin = argc > 1 && strcmp(argv[1], "spin") == 0;
    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (void *)&addr, sizeof addr) || listen(listener, 1) ||
        getsockname(listener, (void *)&addr, &len)) { perror("listen"); return 1; }
    pid_t echo = fork();
    if (echo == 0) {
        pin(0);
        int c = accept(listener, 0, 0);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char buf[SIZE];
        for (int i = 0; i < N; i++) {
            recv_all(c, buf, SIZE, spin);
            if (send(c, buf, SIZE, 0) != SIZE) { perror("send"); return 1; }
        }
        return 0;
    }
    pin(1);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&addr, sizeof addr)) { perror("connect"); return 1; }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static double rtt[N];
    char buf[SIZE] = {0};
    for (int i = 0; i < N; i++) {
        double t = now_us();
        if (send(c, buf, SIZE, 0) != SIZE) { perror("send"); return 1; }
        recv_all(c, buf, SIZE, spin);
        rtt[i] = now_us() - t;
    }
    waitpid(echo, 0, 0);
    qsort(rtt, N, sizeof rtt[0], by_value);
    printf("{\"mode\": \"%s\", \"p50_us\": %.1f, \"p99_us\": %.1f}\n", spin ? "spin" : "block", rtt[N / 2],
           rtt[N * 99 / 100]);
    return 0;
}
