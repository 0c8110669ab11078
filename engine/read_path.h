// File: engine/read_path.h
// What sock_read does: consume input inside the owner's callbacks, through the transport
// layers if the fd has any, and keep the flags that tell the reactor whether to call on_data
// again (edge-triggered epoll reports new input only once).
// Threads: the fd's owner thread (EPERM elsewhere: input belongs to its callbacks).
// Errors: as sock_read in libsock.h: > 0 bytes; 0 for no data yet; -1 with errno 0 at EOF,
// else -1 with errno (the connection then fails and closes).
#ifndef ENGINE_READ_PATH_H_
#define ENGINE_READ_PATH_H_

#include <sys/types.h>

#include <cstddef>

namespace engine {

ssize_t read_input(int fd, void* buf, std::size_t count);

}  // namespace engine

#endif  // ENGINE_READ_PATH_H_
