// hello_server: the seed's HTTP "Hello World!" keep-alive server, on the sharded server. One
// shard (a thread with its own epoll set) per CPU by default; Ctrl-C (SIGINT) or SIGTERM stops
// it gracefully.
//   hello_server [--port P] [--threads N] ...   (default port 3000; --help lists the flags)
//
// It does not parse HTTP: each "\r\n\r\n" in a connection's input ends one request (requests
// carry no body, as with GET), and every request gets the same fixed response. All the
// responses owed for one read are queued before on_data returns, so they coalesce into one
// packet and leave in one writev when the shard flushes.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tools/server_main.h"

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

// Per connection, indexed by fd: how many bytes of kEnd its input so far ends with (0-3), so a
// terminator split across reads counts once. One byte per fd the process may hold, from calloc
// so that the pages of numbers never used stay untouched (the fd limit may be large). Only the
// shard that owns an fd touches its byte: on_open resets it on the new owner, before its first
// on_data (on_close would be too late: it runs after close(2), when the number may already
// belong to a new connection on another shard).
uint8_t* g_matched = nullptr;

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

void on_open(struct Reactor*, int fd) { g_matched[fd] = 0; }

// Runs on the thread of the shard that owns fd, whenever fd has input.
void on_data(struct Reactor* r, int fd) {
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

}  // namespace

int main(int argc, char** argv) {
  // Raises the fd limit to the hard limit (as the server would): one fd per connection.
  const ssize_t fds = sock_max_capacity();
  g_matched =
      fds > 0 ? static_cast<uint8_t*>(std::calloc(static_cast<std::size_t>(fds), 1)) : nullptr;
  if (!g_matched) {
    std::fprintf(stderr, "hello_server: no room for per-connection state: %s\n",
                 std::strerror(errno));
    return 1;
  }
  SockServerSettings settings{};
  settings.defer_accept_s = tools::kHttpDeferAcceptS;
  settings.on_open = on_open;
  settings.on_data = on_data;
  const int status = tools::run_server(
      argc, argv,
      {.name = "hello_server",
       .summary = "Answers every HTTP request with \"Hello World!\" on keep-alive connections.",
       .default_port = "3000",
       .listening = "hello_server listening on http://0.0.0.0:%d/"},
      settings);
  std::free(g_matched);
  return status;
}
