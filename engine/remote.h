// File: engine/remote.h
// A sock_ call made on a thread other than its fd's owner, as it travels to the owner through
// the reactor's inbox (inbox.h): what to do, on which fd, and the fd's generation at call time.
// The owner runs it in its next loop iteration, after the wait for events (routing.h); a call
// whose generation no longer matches (the fd was closed, its number perhaps reused) is
// dropped there, so no byte ever reaches the wrong connection.
// Ownership: a posted call owns its `data` (a malloc'd copy, a moved buffer, a FILE*, a packet
// chain): the owner thread consumes it, or frees it when the call is dropped or discarded.
// Threads: a plain value, copied into the inbox by any thread.
#ifndef ENGINE_REMOTE_H_
#define ENGINE_REMOTE_H_

#include <cstddef>
#include <cstdint>

#include "engine/handle.h"

namespace engine {

struct RemoteCall {
  enum class Kind : uint8_t {
    kOpen,             // open fd for the sock_ API on this reactor (sock_open elsewhere)
    kOpenConnecting,   // the same for a connect in progress (on_ready when it completes)
    // fds accepted and handed over by another thread (accept.h): data, malloc'd int[length];
    // or data NULL, length 1 and the fd in target. Each opened as kOpen does.
    kOpenBatch,
    kAttach,           // attach an fd already open without a reactor
    kWrite,       // data: malloc'd bytes (a copy, or a .move buffer), length bytes
    kWriteFile,   // data: FILE*, length: bytes to send (0 = to the end)
    kSendPacket,  // data: struct Packet chain
    kFlush,
    kClose,
    kForceClose,
    // sock_close / sock_force_close(reactor, fd) of an fd attached to no reactor, through this
    // one: it attaches the fd (graceful) and closes it, on_close included, on its own thread.
    kCloseHere,
    kForceCloseHere,
    kRun,         // fn(data) on the owner thread (tests, benchmarks)
  };
  Kind kind;
  bool urgent;
  // kOpenBatch: accepted with its first input waiting (TCP_DEFER_ACCEPT), so the owner reads
  // it at once (engine/accept.h).
  bool input_waiting;
  uint64_t target;  // fd_key(fd, generation at call time): handle.h
  void* data;
  std::size_t length;
  void (*fn)(void*);

  int fd() const { return key_fd(target); }
  uint32_t generation() const { return key_generation(target); }
};

}  // namespace engine

#endif  // ENGINE_REMOTE_H_
