/*
 * floor-echo: the least work an epoll echo server can do per request, as a floor for
 * tools/bench-anchors.sh. One thread, edge-triggered epoll, interest registered once, reads
 * until a short read (no read that only says EAGAIN), one send per read, no timers, no
 * buffers beyond one stack array, no logging. Whatever socklab or tokio spend above this is
 * their own; what this spends is the kernel's.
 *
 * It is a measuring tool, not a server: a send that the kernel does not take whole closes the
 * connection (counted, and printed at exit; with the bench's small requests it does not
 * happen, and the count shows it).
 *
 * Usage: floor-echo HOST:PORT   (port 0 for a free one; prints "listening HOST:PORT")
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor-echo HOST:PORT\n");
        return 2;
    }
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    if (!colon || (size_t)(colon - argv[1]) >= sizeof host) {
        fprintf(stderr, "floor-echo: %s is not HOST:PORT\n", argv[1]);
        return 2;
    }
    memcpy(host, argv[1], (size_t)(colon - argv[1]));
    host[colon - argv[1]] = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "floor-echo: %s is not an IPv4 address\n", host);
        return 2;
    }
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) {
        perror("floor-echo: bind");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    char shown[64];
    inet_ntop(AF_INET, &addr.sin_addr, shown, sizeof shown);
    printf("listening %s:%d\n", shown, ntohs(addr.sin_port));
    fflush(stdout);

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[1024];
    static char buf[65536];
    unsigned long short_sends = 0;
    while (!stop) {
        int n = epoll_wait(ep, events, 1024, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            int hup = (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
            for (;;) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r > 0) {
                    ssize_t w = send(fd, buf, (size_t)r, 0);
                    if (w != r) {
                        short_sends++;
                        close(fd);
                        break;
                    }
                    if ((size_t)r < sizeof buf && !hup) break;
                    continue;
                }
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                close(fd); /* end of input or an error */
                break;
            }
        }
    }
    fprintf(stderr, "floor-echo: %lu short sends\n", short_sends);
    return 0;
}
