// echo_server: the smallest complete program on libsock/libreact. Every byte a client sends
// comes back to it. One reactor on one thread; Ctrl-C (SIGINT) or SIGTERM stops it gracefully.
//   echo_server [--port P]      (default 3001; 0 picks a free port, printed at start)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/libreact.h"
#include "engine/libsock.h"

namespace {

struct Reactor g_reactor = {};
int g_listener = -1;

void on_data(struct Reactor* r, int fd) {
  if (fd == g_listener) {  // edge-triggered: accept every waiting client, until EAGAIN
    while (sock_accept(r, fd) >= 0) {}
    return;
  }
  char buf[16 * 1024];
  ssize_t n;  // 0: drained for now; -1: the peer left (the library closes the fd)
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (sock_write(fd, buf, static_cast<size_t>(n)) < 0) {  // ENOMEM: never echo with a gap
      sock_force_close(r, fd);
      return;
    }
  }
}

// reactor_stop() is async-signal-safe: it sets a flag and wakes the loop.
void on_signal(int) { reactor_stop(&g_reactor); }

int listening_port(int fd) {  // the real port, for --port 0
  sockaddr_storage addr = {};
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

}  // namespace

int main(int argc, char** argv) {
  const char* port = "3001";
  if (argc == 3 && std::strcmp(argv[1], "--port") == 0) {
    port = argv[2];
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: %s [--port P]\n", argv[0]);
    return 2;
  }
  g_listener = sock_listen(nullptr, port);
  g_reactor.on_data = on_data;
  if (g_listener < 0 || reactor_add(&g_reactor, g_listener) < 0) {
    std::fprintf(stderr, "echo_server: cannot listen on port %s: %s\n", port, std::strerror(errno));
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C ends the process at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::printf("echo_server listening on port %d\n", listening_port(g_listener));
  std::fflush(stdout);

  while (reactor_review(&g_reactor) >= 0) {}
  // -1 with errno 0: the stop completed (every connection closed); otherwise a failure.
  const int err = errno;
  if (err != 0) std::fprintf(stderr, "echo_server: reactor_review: %s\n", std::strerror(err));
  return err != 0;
}
