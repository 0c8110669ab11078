// File: shards/sharded_server.h
// The C++ face of the sharded server (shards/server.h): an RAII owner whose destructor is the
// graceful stop. Threads and callbacks follow server.h.
// Errors: the constructor throws std::system_error (errno, with a message naming the address)
// when the server cannot start; nothing else throws.
// From C this header is server.h alone: every installed header compiles as C and as C++.
#ifndef SHARDS_SHARDED_SERVER_H_
#define SHARDS_SHARDED_SERVER_H_

#include "server.h"  // its sibling, here and once installed

#ifdef __cplusplus
#include <cerrno>
#include <string>
#include <system_error>

namespace shards {

class Server {
 public:
  explicit Server(const SockServerSettings& settings) : server_(sock_server_start_fn(settings)) {
    if (!server_) {
      throw std::system_error(errno, std::generic_category(),
                              std::string("sock_server_start on port ") +
                                  (settings.port ? settings.port : "(null)"));
    }
  }
  // Stops gracefully: stop accepting, on_shutdown, drain, close the rest, join every thread.
  ~Server() { sock_server_stop(server_); }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const { return sock_server_port(server_); }
  int shard_count() const { return sock_server_shard_count(server_); }
  struct Reactor* shard(int i) { return sock_server_shard(server_, i); }
  // Blocks until request_stop() (from any thread or a signal handler).
  void wait() { sock_server_wait(server_); }
  void request_stop() { sock_server_request_stop(server_); }

 private:
  SockServer* server_;
};

}  // namespace shards

#endif  // __cplusplus

#endif  // SHARDS_SHARDED_SERVER_H_
