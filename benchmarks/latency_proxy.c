/*
 * A TCP proxy that delays every byte by a fixed time in each direction: one network hop
 * between the benchmarks' processes and their PostgreSQL, on a machine whose kernel has
 * no netem. benchmarks/latency.py compiles and starts it.
 *
 *     latency_proxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_MICROSECONDS
 *
 * Listens on 127.0.0.1:LISTEN_PORT (0: any free port) and prints "ready PORT" once it
 * does. An UPSTREAM_HOST starting with "/" is a directory of Unix sockets, as libpq's. Each accepted connection gets its own connection to the upstream. What one side
 * sends is read at once and written to the other side DELAY later, in order; a side that
 * closes its writing is closed towards the other once what it sent has been delivered.
 * One thread, epoll, and a timerfd armed at the earliest chunk due, so the delay does not
 * depend on how busy the proxy is, only the added CPU does (a read and a write per chunk).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

struct chunk {
    struct chunk *next;
    uint64_t due_ns;
    size_t length, sent;
    char data[];
};

/* One direction of a connection: bytes read from `from`, delayed, written to `to`. */
struct flow {
    int from, to;
    struct chunk *head, *tail;
    int eof;       /* `from` closed its writing: shut `to`'s once the queue is empty */
    int shut;      /* done so */
    int blocked;   /* `to` would block: wait for EPOLLOUT */
    uint32_t mask; /* the events epoll watches on `from` for this flow */
    struct flow *peer;
    struct link *link;
};

struct link {
    struct flow up, down; /* client -> server, server -> client */
    int closed;
    struct link *next;
};

static int epoll_fd, timer_fd;
static uint64_t delay_ns;
static struct link *links;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void watch(int fd, uint32_t events, void *owner, int op) {
    struct epoll_event event = {.events = events, .data.ptr = owner};
    if (epoll_ctl(epoll_fd, op, fd, &event) < 0) die("epoll_ctl");
}

static void close_link(struct link *link) {
    if (link->closed) return;
    link->closed = 1;
    struct flow *flows[] = {&link->up, &link->down};
    for (int i = 0; i < 2; i++) {
        struct chunk *c = flows[i]->head;
        while (c) {
            struct chunk *next = c->next;
            free(c);
            c = next;
        }
        flows[i]->head = flows[i]->tail = NULL;
    }
    close(link->up.from);
    close(link->down.from);
}

/* Write what is due of `flow`; returns -1 if the link broke. */
static int deliver(struct flow *flow, uint64_t now) {
    while (flow->head && flow->head->due_ns <= now && !flow->blocked) {
        struct chunk *c = flow->head;
        ssize_t n = send(flow->to, c->data + c->sent, c->length - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                flow->blocked = 1;
                break;
            }
            return -1;
        }
        c->sent += (size_t)n;
        if (c->sent < c->length) continue;
        flow->head = c->next;
        if (!flow->head) flow->tail = NULL;
        free(c);
    }
    if (!flow->head && flow->eof && !flow->shut) {
        shutdown(flow->to, SHUT_WR);
        flow->shut = 1;
    }
    return 0;
}

static void update_events(struct link *link) {
    /* Each socket is `from` of one flow (read it unless it hit EOF) and `to` of the
     * other (wait for it to drain when a write blocked); epoll is told only of changes. */
    struct flow *flows[] = {&link->up, &link->down};
    for (int i = 0; i < 2; i++) {
        struct flow *f = flows[i];
        uint32_t events = (f->eof ? 0 : EPOLLIN) | (f->peer->blocked ? EPOLLOUT : 0);
        if (events != f->mask) {
            watch(f->from, events, f, EPOLL_CTL_MOD);
            f->mask = events;
        }
    }
}

static void arm_timer(void) {
    uint64_t earliest = 0;
    for (struct link *l = links; l; l = l->next) {
        if (l->closed) continue;
        struct flow *flows[] = {&l->up, &l->down};
        for (int i = 0; i < 2; i++) {
            struct chunk *c = flows[i]->head;
            if (c && !flows[i]->blocked && (!earliest || c->due_ns < earliest)) {
                earliest = c->due_ns;
            }
        }
    }
    struct itimerspec spec = {0};
    if (earliest) {
        spec.it_value.tv_sec = (time_t)(earliest / 1000000000u);
        spec.it_value.tv_nsec = (long)(earliest % 1000000000u);
    }
    if (timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0) die("timerfd_settime");
}

static int connect_upstream(const char *host, const char *port) {
    if (host[0] == '/') { /* a directory of Unix sockets, as libpq takes it */
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        snprintf(address.sun_path, sizeof address.sun_path, "%s/.s.PGSQL.%s", host, port);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
            close(fd);
            fd = -1;
        }
        return fd;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    if (getaddrinfo(host, port, &hints, &found) != 0) return -1;
    int fd = -1;
    for (struct addrinfo *a = found; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    return fd;
}

static void nonblocking_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_US\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    delay_ns = (uint64_t)strtoull(argv[4], NULL, 10) * 1000u;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0) die("bind");
    if (listen(listener, 512) < 0) die("listen");
    socklen_t length = sizeof address;
    getsockname(listener, (struct sockaddr *)&address, &length);
    printf("ready %d\n", ntohs(address.sin_port));
    fflush(stdout);

    epoll_fd = epoll_create1(0);
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (epoll_fd < 0 || timer_fd < 0) die("epoll/timerfd");
    static int listener_tag, timer_tag;
    watch(listener, EPOLLIN, &listener_tag, EPOLL_CTL_ADD);
    watch(timer_fd, EPOLLIN, &timer_tag, EPOLL_CTL_ADD);
    static char buffer[CHUNK];
    struct epoll_event events[64];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, 64, -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        uint64_t now = now_ns();
        for (int i = 0; i < ready; i++) {
            void *owner = events[i].data.ptr;
            if (owner == &listener_tag) {
                int client = accept(listener, NULL, NULL);
                if (client < 0) continue;
                int server = connect_upstream(argv[2], argv[3]);
                if (server < 0) {
                    close(client);
                    continue;
                }
                nonblocking_nodelay(client);
                nonblocking_nodelay(server);
                struct link *link = calloc(1, sizeof *link);
                link->up = (struct flow){.from = client, .to = server, .link = link, .mask = EPOLLIN};
                link->down = (struct flow){.from = server, .to = client, .link = link, .mask = EPOLLIN};
                link->up.peer = &link->down;
                link->down.peer = &link->up;
                link->next = links;
                links = link;
                watch(client, EPOLLIN, &link->up, EPOLL_CTL_ADD);
                watch(server, EPOLLIN, &link->down, EPOLL_CTL_ADD);
                continue;
            }
            if (owner == &timer_tag) {
                uint64_t expirations;
                (void)!read(timer_fd, &expirations, sizeof expirations);
                continue; /* delivery below */
            }
            struct flow *flow = owner;
            struct link *link = flow->link;
            if (link->closed) continue;
            if (events[i].events & EPOLLOUT) flow->peer->blocked = 0; /* flow->from drains */
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t n = recv(flow->from, buffer, CHUNK, 0);
                if (n > 0) {
                    struct chunk *c = malloc(sizeof *c + (size_t)n);
                    c->next = NULL;
                    c->due_ns = now + delay_ns;
                    c->length = (size_t)n;
                    c->sent = 0;
                    memcpy(c->data, buffer, (size_t)n);
                    if (flow->tail) flow->tail->next = c; else flow->head = c;
                    flow->tail = c;
                } else if (n == 0) {
                    flow->eof = 1;
                } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    close_link(link);
                    continue;
                }
            }
            update_events(link);
        }
        /* Deliver what is due on every link; drop the links that are done. */
        now = now_ns();
        struct link **at = &links;
        while (*at) {
            struct link *link = *at;
            if (!link->closed && (deliver(&link->up, now) < 0 || deliver(&link->down, now) < 0)) {
                close_link(link);
            }
            if (!link->closed && link->up.shut && link->down.shut) close_link(link);
            if (link->closed) {
                *at = link->next;
                free(link);
                continue;
            }
            update_events(link);
            at = &link->next;
        }
        arm_timer();
    }
}
