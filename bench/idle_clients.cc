// idle_clients [--tls] PORT N [SRC_ADDR]: opens N keep-alive TCP connections to
// 127.0.0.1:PORT (the local side bound to SRC_ADDR when given, so several processes can each
// use their own source address and port range), sends one `GET /` on each, reads each response
// fully, prints `ready N`, then holds the connections silently until stdin closes or SIGTERM.
// --tls: each connection first completes a TLS 1.3 handshake (a full one: no session is ever
// offered; the certificate is not verified) and the request and response go over it; then the
// client's SSL object is freed without a close_notify, so the server still holds an open TLS
// connection while this process keeps only the fd (10,000 of them cost the client no memory).
// Used by bench/idle_rss.sh and bench/tls_compare.sh to measure a server's RSS per idle
// keep-alive connection.
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
#include <functional>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

[[noreturn]] void die(const char* what, long i) {
  std::fprintf(stderr, "idle_clients: %s (connection %ld): %s\n", what, i, std::strerror(errno));
  std::exit(1);
}

[[noreturn]] void die_tls(const char* what, long i) {
  char reason[256];
  ERR_error_string_n(ERR_get_error(), reason, sizeof reason);
  std::fprintf(stderr, "idle_clients: %s (connection %ld): %s\n", what, i, reason);
  std::exit(1);
}

// Reads one HTTP response with read_some (read(2)'s contract: bytes, 0 at EOF, < 0 on error):
// headers through "\r\n\r\n", then Content-Length bytes of body. Returns false on EOF or
// error.
bool read_response(const std::function<ssize_t(char*, size_t)>& read_some) {
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
    ssize_t n = read_some(chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool tls = argc > 1 && std::strcmp(argv[1], "--tls") == 0;
  if (tls) {
    --argc;
    ++argv;
  }
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: idle_clients [--tls] PORT N [SRC_ADDR]\n");
    return 2;
  }
  const int port = std::atoi(argv[1]);
  const long n = std::atol(argv[2]);
  const char* src = argc == 4 ? argv[3] : nullptr;

  // One context for every connection; a client SSL offers a session only when given one
  // (SSL_set_session), which this never does, so every handshake is a full one.
  SSL_CTX* ctx = nullptr;
  if (tls) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) {
      die_tls("SSL_CTX_new", -1);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    // Whole reads instead of a header and a body read per record: 10,000 handshakes take
    // long enough on a busy machine as it is.
    SSL_CTX_set_read_ahead(ctx, 1);
  }

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
    constexpr int kRequestLen = sizeof kRequest - 1;
    if (tls) {
      SSL* ssl = SSL_new(ctx);
      if (ssl == nullptr || SSL_set_fd(ssl, fd) != 1) die_tls("SSL_new", i);
      if (SSL_connect(ssl) != 1) die_tls("TLS handshake", i);
      if (SSL_write(ssl, kRequest, kRequestLen) != kRequestLen) die_tls("SSL_write", i);
      // SSL_read's errors (< 0) and a close (0) both end the response.
      auto read_some = [ssl](char* buf, size_t len) -> ssize_t {
        return SSL_read(ssl, buf, static_cast<int>(len));
      };
      if (!read_response(read_some)) die_tls("read response", i);
      SSL_free(ssl);  // no SSL_shutdown: the server sees no close_notify, only silence
    } else {
      if (write(fd, kRequest, kRequestLen) != kRequestLen) die("write", i);
      auto read_some = [fd](char* buf, size_t len) { return read(fd, buf, len); };
      if (!read_response(read_some)) die("read response", i);
    }
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
  SSL_CTX_free(ctx);
  return 0;
}
