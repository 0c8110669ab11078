#include "engine/routing.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/accept.h"
#include "engine/connection.h"
#include "engine/flush.h"
#include "engine/handle.h"
#include "engine/inbox.h"
#include "engine/write_path.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

using Kind = RemoteCall::Kind;

// A kOpenBatch call's fds: its copy, or the one in its target (remote.h); `lone` holds that one.
const int* batch_fds(const RemoteCall& call, const int& lone) {
  return call.data ? static_cast<const int*>(call.data) : &lone;
}

// The fd still holds the connection the call was made for.
bool still_current(const RemoteCall& call) {
  const FdSlot* slot = fd_slot(call.fd());
  return slot && slot->generation.load(std::memory_order_acquire) == call.generation();
}

// kOpen, kOpenConnecting: the thread that opened or connected the fd handed it over and holds
// it no more, so a failure to open it here closes it here; the poster checked it or got it
// from the kernel just before, so it is not checked again. (kOpenBatch goes through
// open_accepted(), which does the same.)
void open_posted(Reactor& reactor, int fd, bool connecting) {
  if (open_known_fd(reactor.api(), fd, connecting) < 0) {
    ::close(fd);
  } else if (reactor.on_open()) {
    reactor.on_open()(reactor.api(), fd);
  }
}

// kOpenBatch: fds another thread accepted and handed over (engine/accept.h), adopted in one
// pass and counted as taken, whether they open or not.
void open_batch_posted(Reactor& reactor, const RemoteCall& call) {
  const int lone = call.fd();
  open_accepted(reactor.api(), batch_fds(call, lone), call.length, call.input_waiting);
  reactor.took_handed_over(call.length);
  std::free(call.data);
}

// A posted write or packet that could not be queued here (ENOBUFS under the memory budget,
// ENOMEM, a FILE* that is not a regular file): its poster was told 0, "queued", and the calls
// after it would go on with a gap in the stream, so the connection fails. Decided by the slot,
// not by errno: one closed or closing already needs nothing, and one that another reactor
// holds now (moved there; the write was forwarded and its post failed) is that thread's.
void fail_unqueued(Reactor& reactor, const RemoteCall& call, int err) {
  if (!still_current(call)) return;
  FdSlot* slot = fd_slot(call.fd());
  if (slot && load_owner(*slot) == &reactor && (slot->flags & kOpen) &&
      !(slot->flags & (kClosing | kFailed))) {
    fail_connection(call.fd(), *slot, err);
  }
}

// kWrite, kWriteFile: written through the handle of the connection the call was made for, so
// a connection that closed meanwhile drops it (write_data frees what it owns). Small copies
// merge into the queue's packets (copied once more, then freed); large ones are linked as
// they are.
void write_posted(Reactor& reactor, const RemoteCall& call) {
  const bool file = call.kind == Kind::kWriteFile;
  const bool merge = !file && call.length <= kRecordPayload;
  SockWriteOpt opt{};
  opt.buffer = call.data;
  opt.length = call.length;
  opt.move = !file && !merge;
  opt.file = file;
  opt.urgent = call.urgent;
  opt.uuid = make_uuid(call.fd(), call.generation());
  if (write_data(opt) < 0) fail_unqueued(reactor, call, errno);
  if (merge) std::free(call.data);
}

}  // namespace

int post(Reactor& to, RemoteCall::Kind kind, int fd, uint32_t generation, void* data,
         std::size_t length, bool urgent) {
  return post(to, RemoteCall{.kind = kind,
                             .urgent = urgent,
                             .input_waiting = false,
                             .target = fd_key(fd, generation),
                             .data = data,
                             .length = length,
                             .fn = nullptr});
}

int post(Reactor& to, const RemoteCall& call) {
  bool made = false;
  Inbox* inbox = to.inbox(&made);
  const bool queued = inbox && inbox->post(call);
  // A new inbox: its owner may be blocked in epoll_wait after looking for one before it
  // existed, so it never announced that sleep to the inbox, and the inbox's own wakeup
  // (inbox.cc) would not reach it. This one does; from the owner's next look on, the inbox's
  // protocol takes over. Also when this post failed: another thread that lost the race to
  // make the inbox may have posted into it already, counting on this wake.
  if (made) to.wake();
  if (!queued) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

ssize_t post_write(const Target& t, int fd, const SockWriteOpt& opt) {
  void* data = const_cast<void*>(opt.buffer);
  if (opt.file) {
    return post(*t.remote, Kind::kWriteFile, fd, t.generation, data, opt.length, opt.urgent) < 0
               ? fail_write(opt, ENOMEM)
               : 0;
  }
  if (!opt.move) {
    data = std::malloc(opt.length);
    if (!data) return fail_write(opt, ENOMEM);
    std::memcpy(data, opt.buffer, opt.length);
  }
  if (post(*t.remote, Kind::kWrite, fd, t.generation, data, opt.length, opt.urgent) < 0) {
    std::free(data);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void run_posted(Reactor& reactor, const RemoteCall& call) {
  switch (call.kind) {
    case Kind::kOpen:
      open_posted(reactor, call.fd(), false);
      return;
    case Kind::kOpenConnecting:
      open_posted(reactor, call.fd(), true);
      return;
    case Kind::kOpenBatch:
      open_batch_posted(reactor, call);
      return;
    case Kind::kAttach:
      if (attach_connection(reactor.api(), call.fd()) < 0) {
        // The poster published this reactor as the owner: the fd is unattached again, unless
        // another reactor took it meanwhile (the attach failed for that: EEXIST).
        FdSlot* slot = fd_slot(call.fd());
        if (slot && still_current(call) && load_owner(*slot) == &reactor) set_owner(*slot, nullptr);
      }
      return;
    case Kind::kWrite:
    case Kind::kWriteFile:
      write_posted(reactor, call);
      return;
    case Kind::kSendPacket:
      if (!still_current(call)) {
        packet_chain_free(static_cast<Packet*>(call.data));  // the connection is gone
      } else if (send_packet(call.fd(), static_cast<Packet*>(call.data)) < 0) {
        const int err = errno;
        packet_chain_free(static_cast<Packet*>(call.data));
        fail_unqueued(reactor, call, err);
      }
      return;
    case Kind::kFlush:
      if (still_current(call)) flush_output(call.fd());
      return;
    case Kind::kClose:
    case Kind::kForceClose:
      close_connection(nullptr, call.fd(), call.kind == Kind::kClose,
                       make_uuid(call.fd(), call.generation()));
      return;
    case Kind::kCloseHere:
    case Kind::kForceCloseHere:
      close_connection(reactor.api(), call.fd(), call.kind == Kind::kCloseHere,
                       make_uuid(call.fd(), call.generation()));
      return;
    case Kind::kRun:
      call.fn(call.data);
      return;
  }
}

void discard_posted(const RemoteCall& call) {
  switch (call.kind) {
    case Kind::kOpen:
    case Kind::kOpenConnecting:
      ::close(call.fd());
      return;
    case Kind::kOpenBatch: {
      const int lone = call.fd();
      const int* fds = batch_fds(call, lone);
      for (std::size_t i = 0; i < call.length; ++i) ::close(fds[i]);
      std::free(call.data);
      return;
    }
    case Kind::kWrite:
      std::free(call.data);
      return;
    case Kind::kWriteFile:
      std::fclose(static_cast<FILE*>(call.data));
      return;
    case Kind::kSendPacket:
      packet_chain_free(static_cast<Packet*>(call.data));
      return;
    case Kind::kAttach:
      // The poster published the reactor as the fd's owner; the fd is unattached again.
      if (still_current(call)) set_owner(*fd_slot(call.fd()), nullptr);
      return;
    case Kind::kCloseHere:
    case Kind::kForceCloseHere:
      // The caller gave the fd up: close it without the reactor that would have reported it.
      if (still_current(call)) {
        close_slot(call.fd(), *fd_slot(call.fd()), nullptr, CloseReason::kLocal);
      }
      return;
    case Kind::kFlush:
    case Kind::kClose:
    case Kind::kForceClose:
    case Kind::kRun:
      return;
  }
}

}  // namespace engine
