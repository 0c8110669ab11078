// A C++ program built with CMake against the installed library (install_test.sh): a sharded
// echo server (two shards, port 0) that a plain blocking client on the main thread checks,
// then stops. Exits 0 when the message came back byte for byte, 1 otherwise.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <libsock/sharded_server.h>

namespace {

void on_data(struct Reactor* reactor, int fd) {
  char buf[4096];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (sock_write(fd, buf, static_cast<size_t>(n)) < 0) {
      sock_force_close(reactor, fd);
      return;
    }
  }
}

// Sends message to 127.0.0.1:port and reads until as many bytes came back (or 10 s pass).
std::string echo_once(int port, const std::string& message) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string back;
  if (connect(s, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      send(s, message.data(), message.size(), 0) == static_cast<ssize_t>(message.size())) {
    char buf[4096];
    ssize_t n;
    while (back.size() < message.size() && (n = recv(s, buf, sizeof buf, 0)) > 0) back.append(buf, n);
  }
  close(s);
  return back;
}

}  // namespace

int main() {
  const std::string message(100000, 'x');
  SockServerSettings settings{};
  settings.address = "127.0.0.1";
  settings.port = "0";
  settings.threads = 2;
  settings.on_data = on_data;
  shards::Server server(settings);
  const bool ok = echo_once(server.port(), message) == message;
  std::printf("echo_server_cxx: %s, %d shards\n", ok ? "echoed" : "FAILED", server.shard_count());
  return ok ? 0 : 1;
}
