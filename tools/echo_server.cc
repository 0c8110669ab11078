// echo_server: the smallest complete program on libsock and the sharded server. Every byte a
// client sends comes back to it. One shard (a thread with its own epoll set) per CPU by
// default; Ctrl-C (SIGINT) or SIGTERM stops it gracefully.
//   echo_server [--port P] [--threads N] ...   (default port 3001; --help lists the flags)
#include "engine/libsock.h"
#include "shards/server.h"
#include "tools/server_main.h"

namespace {

// Runs on the thread of the shard that owns fd, whenever fd has input.
void on_data(struct Reactor* r, int fd) {
  char buf[16 * 1024];
  ssize_t n;  // 0: drained for now; -1: the peer left (the library closes the fd)
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (sock_write(fd, buf, static_cast<size_t>(n)) < 0) {  // out of memory: never echo a gap
      sock_force_close(r, fd);
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  SockServerSettings settings{};
  settings.on_data = on_data;
  return tools::run_server(argc, argv,
                           {.name = "echo_server",
                            .summary = "Echoes every byte each client sends back to it.",
                            .default_port = "3001",
                            .listening = "echo_server listening on port %d"},
                           settings);
}
