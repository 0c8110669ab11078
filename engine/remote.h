// File: engine/remote.h
// How work reaches a reactor from other threads: the engine's side of the one cross-thread
// door per shard.
//
// The engine itself creates no threads. A reactor driven by a shard (shards/) is given an
// Inbox; from then on every sock_ call made on a thread other than the reactor's owner is
// posted to that inbox as a RemoteCall stamped with the fd's generation at call time, and the
// owner runs it at the top of its next loop iteration. A call whose generation no longer
// matches (the fd was closed, its number perhaps reused) is dropped there, so no byte ever
// reaches the wrong connection. A reactor without an inbox (the seed's single-threaded use)
// runs every call inline.
// Ownership: a posted call owns its `data` (a malloc'd copy, a moved buffer, a FILE*, a packet
// chain): the owner thread consumes it, or frees it when the call is dropped.
#ifndef ENGINE_REMOTE_H_
#define ENGINE_REMOTE_H_

#include <cstddef>
#include <cstdint>

namespace engine {

class Reactor;

struct RemoteCall {
  enum class Kind : uint8_t {
    kAdopt,            // open fd (accepted elsewhere) for the sock_ API on this reactor
    kAdoptConnecting,  // the same for a connect in progress (on_ready when it completes)
    kAttach,           // attach an fd already open without a reactor
    kWrite,       // data: malloc'd bytes (a copy, or a .move buffer), length bytes
    kWriteFile,   // data: FILE*, length: bytes to send (0 = to the end)
    kSendPacket,  // data: struct Packet chain
    kFlush,
    kClose,
    kForceClose,
    kRun,         // fn(data) on the owner thread (tests, tools)
  };
  Kind kind;
  bool urgent;
  int fd;
  uint32_t generation;
  void* data;
  std::size_t length;
  void (*fn)(void*);
};

// Implemented by shards/ (Boost.Lockfree queue + eventfd wakeup). Calls from one producer run
// in the order they were posted.
class Inbox {
 public:
  virtual ~Inbox() = default;
  // Any thread. Queues the call and wakes the owner if it sleeps. False only when memory ran
  // out (the call was not queued; its data is still the caller's).
  virtual bool post(const RemoteCall& call) = 0;
  // Owner thread: runs queued calls through owner.run_remote(), up to a batch (so one loop
  // iteration stays bounded; may_sleep() stays false while calls remain). Returns how many ran.
  virtual std::size_t drain(Reactor& owner) = 0;
  // Owner thread, right before a blocking wait: false if calls arrived meanwhile (then do not
  // block). After true, a later post() wakes the owner through Reactor::wake().
  virtual bool may_sleep() = 0;
};

}  // namespace engine

#endif  // ENGINE_REMOTE_H_
