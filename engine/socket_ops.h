// File: engine/socket_ops.h
// Socket setup shared by the libsock calls: name resolution and socket options. No fd state.
// Threads: any. Errors: nullptr / -1 with errno.
#ifndef ENGINE_SOCKET_OPS_H_
#define ENGINE_SOCKET_OPS_H_

#include <netdb.h>

namespace engine {

// getaddrinfo for TCP; errno is mapped from EAI_* (EINVAL for a NULL port). Free the list
// with freeaddrinfo.
addrinfo* resolve(const char* address, const char* port, bool passive);
// sock_listen(), with SO_REUSEPORT too when `reuse_port` (one listener per shard on one port).
int listen_socket(const char* address, const char* port, bool reuse_port);
// A non-blocking, close-on-exec TCP socket.
int open_stream_socket(int family);
void set_no_delay(int fd);

}  // namespace engine

#endif  // ENGINE_SOCKET_OPS_H_
