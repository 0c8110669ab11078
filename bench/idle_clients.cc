// idle_clients PORT N [SRC_ADDR]: opens N keep-alive TCP connections to 127.0.0.1:PORT (the
// local side bound to SRC_ADDR when given, so several processes can each use their own source
// address and port range), sends one `GET /` on each, reads each response fully, prints
// `ready N`, then holds the connections silently until stdin closes or SIGTERM.
// Used by bench/idle_rss.sh to measure a server's RSS per idle keep-alive connection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const char* what, long i) {
  std::fprintf(stderr, "idle_clients: %s (connection %ld): %s\n", what, i, std::strerror(errno));
  std::exit(1);
}

// Reads one HTTP response on a blocking fd: headers through "\r\n\r\n", then Content-Length
// bytes of body. Returns false on EOF or error.
bool read_response(int fd) {
  std::string buf;
  char chunk[4096];
  size_t header_end = std::string::npos;
  size_t need = 0;
  for (;;) {
    if (header_end == std::string::npos) {
      header_end = buf.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        header_end += 4;
        size_t body = 0;
        for (size_t p = 0; p < header_end;) {
          size_t eol = buf.find("\r\n", p);
          if (eol == std::string::npos || eol >= header_end) break;
          std::string line = buf.substr(p, eol - p);
          if (line.size() > 15 && strncasecmp(line.c_str(), "content-length:", 15) == 0) {
            body = std::strtoul(line.c_str() + 15, nullptr, 10);
          }
          p = eol + 2;
        }
        need = header_end + body;
      }
    }
    if (header_end != std::string::npos && buf.size() >= need) return true;
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s PORT N [SRC_ADDR]\n", argv[0]);
    return 2;
  }
  const int port = std::atoi(argv[1]);
  const long n = std::atol(argv[2]);
  const char* src = argc == 4 ? argv[3] : nullptr;

  signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  if (src != nullptr && inet_pton(AF_INET, src, &local.sin_addr) != 1) {
    std::fprintf(stderr, "idle_clients: bad SRC_ADDR %s\n", src);
    return 2;
  }

  static const char kRequest[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  std::vector<int> fds;
  fds.reserve(static_cast<size_t>(n));
  for (long i = 0; i < n; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket", i);
    if (src != nullptr) {
      int one = 1;
      // Let the kernel pick the port at connect() time, so ports are shared across destinations.
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) die("bind", i);
    }
    if (connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) die("connect", i);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (write(fd, kRequest, sizeof kRequest - 1) != static_cast<ssize_t>(sizeof kRequest - 1)) {
      die("write", i);
    }
    if (!read_response(fd)) die("read response", i);
    fds.push_back(fd);
  }
  std::printf("ready %ld\n", n);
  std::fflush(stdout);

  // Hold until stdin closes (EOF or error) or a signal ends the process (SIGTERM's default).
  char c;
  for (;;) {
    ssize_t r = read(0, &c, 1);
    if (r == 0 || (r < 0 && errno != EINTR)) break;
  }
  for (int fd : fds) close(fd);
  return 0;
}
