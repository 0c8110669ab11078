/* The seed document's "A Quick Example": an HTTP hello world with keep-alive on one static
 * reactor, written against our headers as the seed wrote it, with the seed's bugs fixed:
 * the response has its blank line, accept() returning fd 0 is a client, clients are
 * non-blocking and read until EAGAIN (the reactor is edge-triggered), a closed client is
 * closed here, the response is sent with MSG_NOSIGNAL (write() on a reset connection raises
 * SIGPIPE), and bind tries every address getaddrinfo gives.
 *
 * Usage: seed_quick_example PORT ("0" picks a free port). The first line on stdout is
 * "port N"; SIGINT stops the reactor and the program exits with status 0.
 *
 * libreact.h comes first, as in the seed: with only the feature-test macro before it, it
 * must compile on its own as C11. */
#define _POSIX_C_SOURCE 200809L

#include "engine/libreact.h"
#include "engine/libsock.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* This will accept connections: a simple HTTP hello world (with keep-alive). */
static void on_data(struct Reactor* reactor, int fd);

static struct Reactor r = {.on_data = on_data, .maxfd = 1024};
static int srvfd = -1; /* to make it simple, a global listening socket */

/* The exit signal (^C). reactor_stop() is async-signal-safe. */
static void on_sigint(int sig) {
  (void)sig;
  reactor_stop(&r);
}

static void on_data(struct Reactor* reactor, int fd) {
  static const char response[] =
      "HTTP/1.1 200 OK\r\n"
      "Content-Length: 12\r\n"
      "Connection: keep-alive\r\n"
      "Keep-Alive: timeout=2\r\n"
      "\r\n"
      "Hello World!";
  char buff[8192];
  ssize_t len;

  if (fd == srvfd) { /* our listening socket: accept until EAGAIN (edge-triggered) */
    int client;
    while ((client = accept(fd, NULL, NULL)) >= 0) {
      if (sock_set_non_block(client) < 0 || reactor_add(reactor, client) < 0) close(client);
    }
    return;
  }
  /* One response per read, as in the seed (each client sends one request at a time). */
  while ((len = recv(fd, buff, sizeof buff, 0)) > 0) {
    if (send(fd, response, sizeof response - 1, MSG_NOSIGNAL) < 0) break;
  }
  if (len == 0 || (len < 0 && errno != EAGAIN && errno != EINTR)) {
    reactor_close(reactor, fd); /* the client left (or failed) */
  }
}

/* Listens on `port` on the first local address that binds; returns the fd or -1. */
static int listen_on(const char* port) {
  struct addrinfo hints;
  struct addrinfo* servinfo; /* will point to the results */
  struct addrinfo* ai;
  int fd = -1;

  memset(&hints, 0, sizeof hints); /* make sure the struct is empty */
  hints.ai_family = AF_UNSPEC;     /* don't care IPv4 or IPv6 */
  hints.ai_socktype = SOCK_STREAM; /* TCP stream sockets */
  hints.ai_flags = AI_PASSIVE;     /* fill in my IP for me */
  if (getaddrinfo(NULL, port, &hints, &servinfo)) {
    fprintf(stderr, "addr err\n");
    return -1;
  }
  for (ai = servinfo; ai && fd < 0; ai = ai->ai_next) {
    int optval = 1; /* avoid the "address taken" */
    int flags;
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &optval, sizeof optval);
    /* make sure the socket is non-blocking, then listen in */
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || (flags = fcntl(fd, F_GETFL, 0)) < 0 ||
        fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || listen(fd, SOMAXCONN) < 0) {
      perror("listen err");
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(servinfo); /* free the address data memory */
  return fd;
}

/* The port the kernel chose (for "0"), from the bound address. */
static int bound_port(int fd) {
  struct sockaddr_storage addr;
  socklen_t len = sizeof addr;
  if (getsockname(fd, (struct sockaddr*)&addr, &len) < 0) return -1;
  if (addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6*)&addr)->sin6_port);
  return ntohs(((struct sockaddr_in*)&addr)->sin_port);
}

int main(int argc, char const* argv[]) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  srvfd = listen_on(argv[1]);
  if (srvfd < 0) return 1;
  /* Now that everything is ready, call the reactor library: the first reactor_add()
   * initialises the static reactor. The signal handler is set after it, so a SIGINT always
   * finds a reactor to stop. */
  if (reactor_add(&r, srvfd) < 0) {
    perror("reactor_add");
    return 1;
  }
  signal(SIGINT, on_sigint);
  printf("port %d\n", bound_port(srvfd));
  fflush(stdout);

  while (reactor_review(&r) >= 0);

  if (errno) {
    perror("Finished. last error was");
    return 1;
  }
  return 0;
}
