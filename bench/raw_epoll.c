/* The ceiling for bench/compare.sh: the least work an HTTP hello-world server can do on Linux.
 * One thread, one edge-triggered epoll set, a non-blocking listener. Per readable connection it
 * reads until the socket is empty, counts request terminators ("\r\n\r\n", with the partial
 * match carried per fd across reads) and owes one canned response per terminator; all owed
 * responses leave in one write() from a buffer pre-filled with copies of the response, so
 * answering costs no copying and no parsing. Bytes the kernel would not take wait in a small
 * per-fd buffer until EPOLLOUT.
 * "Empty" is a short read: for TCP under EPOLLET, data arriving after it raises a new edge, so
 * the read that would return EAGAIN is skipped (as our engine does), unless the peer's FIN or an
 * error came with this event (EPOLLRDHUP/HUP/ERR), which would raise no new edge. --drain reads
 * until EAGAIN every time (the textbook loop: one more syscall per event).
 * --close is the churn ceiling: a connection's first complete request is answered with a
 * `Connection: close` response and the connection is closed as soon as the kernel took all of
 * it (at once, or on the EPOLLOUT that flushed the rest); anything after that first request is
 * ignored. The listener defers accepts (TCP_DEFER_ACCEPT, as nginx's `listen ... deferred` and
 * our HTTP tools by default), so an accepted connection's request has arrived: it is read at
 * once, and epoll hears of the fd only if it outlives that (a request still incomplete, a reply
 * the kernel did not take whole). Per connection that is accept4, read, write, close and
 * nothing else (epoll_wait and the accept4 that ends each batch with EAGAIN are shared): no
 * TCP_NODELAY, since the one write goes out at once on an idle connection and close pushes it
 * anyway; no epoll_ctl; no lingering close (a client that sends more than one request may get
 * a reset, which wrk's churn load never does).
 *   raw_epoll [--port P] [--drain] [--close]   (default port 18082; SIGINT/SIGTERM end it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char kResponse[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nHello World!";
#define RESPONSE_LEN (sizeof kResponse - 1)
static const char kCloseResponse[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    "\r\nHello World!";
#define CLOSE_RESPONSE_LEN (sizeof kCloseResponse - 1)
#define OUT_RESPONSES 1024           /* one write() carries up to this many responses */
#define PENDING_MAX (16u << 20)      /* a client that sends but never reads gets closed */

struct conn {
  unsigned matched;                  /* how much of "\r\n\r\n" the last read ended in (0-3) */
  char* pending;                     /* bytes the kernel did not take yet, sent on EPOLLOUT */
  size_t pending_len, pending_cap;
  int answered;                      /* --close: response written or pending; close once sent */
};

static struct conn* conns;           /* indexed by fd, sized by RLIMIT_NOFILE */
static int max_fds;
static char out[OUT_RESPONSES * RESPONSE_LEN];  /* OUT_RESPONSES copies of kResponse */
static int drain;                    /* --drain: always read until EAGAIN */
static int close_mode;               /* --close: one response per connection, then close */

static void close_conn(int fd) {
  free(conns[fd].pending);
  memset(&conns[fd], 0, sizeof conns[fd]);
  close(fd);
}

/* Keeps bytes the kernel refused, to be sent when the socket becomes writable. */
static int keep_pending(struct conn* c, const char* p, size_t n) {
  if (c->pending_len + n > PENDING_MAX) return -1;
  if (c->pending_len + n > c->pending_cap) {
    size_t cap = c->pending_cap ? c->pending_cap : 4096;
    while (cap < c->pending_len + n) cap *= 2;
    char* grown = realloc(c->pending, cap);
    if (!grown) return -1;
    c->pending = grown;
    c->pending_cap = cap;
  }
  memcpy(c->pending + c->pending_len, p, n);
  c->pending_len += n;
  return 0;
}

/* Sends what waits in the pending buffer; 0 when done or the kernel is full, -1 to close. */
static int flush_pending(int fd, struct conn* c) {
  size_t off = 0;
  while (off < c->pending_len) {
    ssize_t w = write(fd, c->pending + off, c->pending_len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return -1;
      break;
    }
    off += (size_t)w;
  }
  memmove(c->pending, c->pending + off, c->pending_len - off);
  c->pending_len -= off;
  return 0;
}

/* Sends `owed` canned responses, in one write() unless more than OUT_RESPONSES are owed. */
static int respond(int fd, struct conn* c, size_t owed) {
  while (owed > 0) {
    size_t k = owed < OUT_RESPONSES ? owed : OUT_RESPONSES, len = k * RESPONSE_LEN;
    owed -= k;
    if (c->pending_len > 0) {        /* keep the order: behind what already waits */
      if (keep_pending(c, out, len) < 0) return -1;
      continue;
    }
    ssize_t w = write(fd, out, len);
    if (w < 0) {
      if (errno != EAGAIN && errno != EINTR) return -1;
      w = 0;
    }
    if ((size_t)w < len && keep_pending(c, out + w, len - (size_t)w) < 0) return -1;
  }
  return 0;
}

/* --close: writes the closing response and closes, or keeps what the kernel refused and
 * leaves the close to the EPOLLOUT that flushes it. Returns 1 once fd is closed. */
static int answer_and_close(int fd, struct conn* c) {
  ssize_t w = write(fd, kCloseResponse, CLOSE_RESPONSE_LEN);
  if (w < 0) {
    if (errno != EAGAIN && errno != EINTR) {
      close_conn(fd);
      return 1;
    }
    w = 0;
  }
  if ((size_t)w == CLOSE_RESPONSE_LEN ||
      keep_pending(c, kCloseResponse + w, CLOSE_RESPONSE_LEN - (size_t)w) < 0) {
    close_conn(fd);
    return 1;
  }
  c->answered = 1;
  return 0;
}

/* Counts complete "\r\n\r\n" in buf, carrying a partial match in *matched. */
static size_t count_requests(const char* buf, size_t n, unsigned* matched) {
  static const char term[4] = {'\r', '\n', '\r', '\n'};
  size_t found = 0;
  unsigned m = *matched;
  for (size_t i = 0; i < n; i++) {
    char ch = buf[i];
    if (ch == term[m]) {
      if (++m == 4) { found++; m = 0; }
    } else {
      m = ch == '\r';
    }
  }
  *matched = m;
  return found;
}

/* Readable (or writable) connection: read until empty, then answer everything in one write.
 * Returns 1 once fd is closed. */
static int on_conn(int fd, uint32_t events) {
  struct conn* c = &conns[fd];
  if ((events & EPOLLOUT) && c->pending_len > 0 && flush_pending(fd, c) < 0) {
    close_conn(fd);
    return 1;
  }
  if (c->answered) {                 /* --close: input is ignored, only the flush matters */
    if (c->pending_len > 0 && !(events & (EPOLLHUP | EPOLLERR))) return 0;
    close_conn(fd);
    return 1;
  }
  if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return 0;
  char buf[65536];
  size_t owed = 0;
  int until_eagain = drain || (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      owed += count_requests(buf, (size_t)n, &c->matched);
      if (close_mode && owed > 0) return answer_and_close(fd, c);
      if ((size_t)n < sizeof buf && !until_eagain) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n == 0 && owed > 0) respond(fd, c, owed);  /* EOF: a half-closed peer still reads */
    close_conn(fd);
    return 1;
  }
  if (owed > 0 && respond(fd, c, owed) < 0) {
    close_conn(fd);
    return 1;
  }
  return 0;
}

static void on_listener(int epfd, int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;                        /* EAGAIN (or out of fds: retried when a connection arrives) */
    }
    if (fd >= max_fds) { close(fd); continue; }
    if (close_mode) {
      if (on_conn(fd, EPOLLIN)) continue;  /* deferred: its request came with it */
    } else {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    /* EPOLLOUT once, edge-triggered: it only fires when a full send buffer drains. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.fd = fd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) close(fd);
  }
}

int main(int argc, char** argv) {
  int port = 18082;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
      port = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--drain") == 0) {
      drain = 1;
    } else if (strcmp(argv[i], "--close") == 0) {
      close_mode = 1;
    } else {
      fprintf(stderr, "usage: %s [--port P] [--drain] [--close]\n", argv[0]);
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);

  struct rlimit rl;
  max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                ? (int)rl.rlim_cur : 65536;
  conns = calloc((size_t)max_fds, sizeof *conns);
  for (size_t i = 0; i < OUT_RESPONSES; i++) {
    memcpy(out + i * RESPONSE_LEN, kResponse, RESPONSE_LEN);
  }

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (close_mode) setsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (!conns || lfd < 0 || bind(lfd, (struct sockaddr*)&addr, sizeof addr) < 0 ||
      listen(lfd, SOMAXCONN) < 0) {
    perror("raw_epoll: listen");
    return 1;
  }
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.fd = lfd};
  if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0) {
    perror("raw_epoll: epoll");
    return 1;
  }

  struct epoll_event events[512];
  for (;;) {
    int n = epoll_wait(epfd, events, 512, -1);
    if (n < 0 && errno != EINTR) { perror("raw_epoll: epoll_wait"); return 1; }
    for (int i = 0; i < n; i++) {
      if (events[i].data.fd == lfd) on_listener(epfd, lfd);
      else on_conn(events[i].data.fd, events[i].events);
    }
  }
}
