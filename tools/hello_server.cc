// hello_server: the seed's HTTP "Hello World!" keep-alive server, on libsock/libreact.
// One reactor on one thread; Ctrl-C (SIGINT) or SIGTERM stops it gracefully.
//   hello_server [--port P]     (default 3000; 0 picks a free port, printed at start)
//
// It does not parse HTTP: each "\r\n\r\n" in a connection's input ends one request (requests
// carry no body, as with GET), and every request gets the same fixed response. All the
// responses owed for one read are queued before on_data returns, so they coalesce into one
// packet and leave in one writev when the reactor flushes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"

namespace {

constexpr char kResponse[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Length: 12\r\n"
    "Content-Type: text/plain\r\n"
    "Connection: keep-alive\r\n"
    "\r\n"
    "Hello World!";
constexpr char kEnd[] = "\r\n\r\n";
constexpr std::size_t kEndLength = sizeof kEnd - 1;

struct Reactor g_reactor = {};
int g_listener = -1;
// Per connection, indexed by fd: how many bytes of kEnd its input so far ends with (0-3), so a
// terminator split across reads counts once. One byte per fd; reset when the fd closes.
std::vector<uint8_t> g_matched;

// Counts the terminators that end in data[0, length), continuing from *matched.
unsigned count_requests(const char* data, std::size_t length, uint8_t* matched) {
  unsigned requests = 0;
  std::size_t m = *matched;
  for (std::size_t i = 0; i < length; ++i) {
    if (data[i] == kEnd[m]) {
      if (++m == kEndLength) {
        ++requests;
        m = 0;
      }
    } else {
      // After a mismatch the longest start of kEnd the input can end with is "\r" or nothing
      // (kEnd's only repeat is its '\r'; "\r\n\r" then '\r' ends in "\r").
      m = data[i] == '\r';
    }
  }
  *matched = static_cast<uint8_t>(m);
  return requests;
}

void on_data(struct Reactor* r, int fd) {
  if (fd == g_listener) {  // edge-triggered: accept every waiting client, until EAGAIN
    int client;
    while ((client = sock_accept(r, fd)) >= 0) {
      if (static_cast<std::size_t>(client) >= g_matched.size()) g_matched.resize(client + 1);
    }
    return;
  }
  char buf[16 * 1024];
  ssize_t n;  // 0: drained for now; -1: the peer left (the library closes the fd)
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    for (unsigned k = count_requests(buf, static_cast<std::size_t>(n), &g_matched[fd]); k; --k) {
      // A lost response would pair every later request with the wrong answer: give up.
      if (sock_write(fd, kResponse, sizeof kResponse - 1) < 0) {
        sock_force_close(r, fd);
        return;
      }
    }
  }
}

void on_close(struct Reactor*, int fd) {
  if (static_cast<std::size_t>(fd) < g_matched.size()) g_matched[fd] = 0;
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

void usage(std::FILE* out, const char* name) {
  std::fprintf(out,
               "usage: %s [--port P]\n"
               "Answers every HTTP request with \"Hello World!\" on keep-alive connections.\n"
               "  --port P   TCP port to listen on (default 3000; 0 picks a free one)\n"
               "  --help     print this help\n"
               "SIGINT (Ctrl-C) or SIGTERM stops it once queued responses are sent.\n",
               name);
}

}  // namespace

int main(int argc, char** argv) {
  const char* port = "3000";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0) {
      usage(stdout, argv[0]);
      return 0;
    }
    if (std::strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
      port = argv[++i];
    } else {
      std::fprintf(stderr, "hello_server: unknown or incomplete option '%s'\n", argv[i]);
      usage(stderr, argv[0]);
      return 2;
    }
  }
  sock_max_capacity();  // raise the fd limit to the hard limit: one fd per connection
  g_listener = sock_listen(nullptr, port);
  g_reactor.on_data = on_data;
  g_reactor.on_close = on_close;
  if (g_listener < 0 || reactor_add(&g_reactor, g_listener) < 0) {
    std::fprintf(stderr, "hello_server: cannot listen on port %s: %s\n", port,
                 std::strerror(errno));
    return 1;
  }
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C ends the process at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::printf("hello_server listening on http://0.0.0.0:%d/\n", listening_port(g_listener));
  std::fflush(stdout);

  while (reactor_review(&g_reactor) >= 0) {}
  // -1 with errno 0: the stop completed (every connection closed); otherwise a failure.
  const int err = errno;
  if (err != 0) std::fprintf(stderr, "hello_server: reactor_review: %s\n", std::strerror(err));
  return err != 0;
}
