// File: engine/write_path.h
// What sock_write2, sock_send_packet and sock_tlc_write do on the fd's owner thread: the
// direct first write (write_path.cc explains it), then the write queue (write_queue.h) and
// the flush step (flush.h). Off the owner thread the first two are posted (routing.h) and run
// here once the owner gets them; sock_tlc_write needs the owner thread.
// Ownership: as libsock.h says: .move buffers and .file FILE*s belong to the library from the
// call on, even on error; a packet chain is the caller's until send_packet() succeeds.
// Errors: -1 with errno, as libsock.h lists for each call.
#ifndef ENGINE_WRITE_PATH_H_
#define ENGINE_WRITE_PATH_H_

#include <sys/types.h>

#include <cstddef>

#include "engine/libsock.h"

namespace engine {

// sock_write2: routes the write, then sends or queues it.
ssize_t write_data(const SockWriteOpt& opt);

// sock_send_packet: queues a caller-built chain and flushes.
ssize_t send_packet(int fd, Packet* packet);

// sock_tlc_write: queues bytes a transport layer produced itself, as records wrapped only by
// the layers below `from`. Owner thread (EPERM elsewhere).
int tlc_write(int fd, sockTLC* from, const void* data, std::size_t length);

// Frees what a write owned (its .move buffer or .file FILE*), sets errno to err, returns -1.
ssize_t fail_write(const SockWriteOpt& opt, int err);

}  // namespace engine

#endif  // ENGINE_WRITE_PATH_H_
