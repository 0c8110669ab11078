#include "engine/tlc.h"

#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <memory>
#include <utility>

#include "engine/connection.h"
#include "engine/reactor.h"
#include "engine/read_buffer.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

// One recv takes at most a packet's worth, so a layer expanding it (decompression, or a
// layer releasing plaintext it held) has room to spare in the scratch buffer.
constexpr std::size_t kRecvBytes = kPacketBytes;
constexpr std::size_t kScratchBytes = 4 * kPacketBytes;
static_assert(kRecvBytes < kScratchBytes);

char* scratch() {
  // Per thread, allocated on the first read through layers only.
  thread_local std::unique_ptr<char[]> buffer;
  if (!buffer) buffer.reset(new char[kScratchBytes]);
  return buffer.get();
}

// A tlc_read() in progress on this thread, listed for tlc_chain_changed() while it runs (a
// layer's unwrap may read another fd: the list nests, innermost first).
class ChainWatch {
 public:
  explicit ChainWatch(int fd) : fd_(fd), outer_(innermost_) { innermost_ = this; }
  ~ChainWatch() { innermost_ = outer_; }
  ChainWatch(const ChainWatch&) = delete;
  ChainWatch& operator=(const ChainWatch&) = delete;

  // What happened to the chain since the last take().
  ChainChange take() { return std::exchange(change_, ChainChange::kNone); }

  static void note(int fd, ChainChange change) {
    for (ChainWatch* w = innermost_; w; w = w->outer_) {
      if (w->fd_ == fd) w->change_ = std::max(w->change_, change);
    }
  }

 private:
  const int fd_;
  ChainChange change_ = ChainChange::kNone;
  ChainWatch* const outer_;
  static thread_local ChainWatch* innermost_;
};

thread_local ChainWatch* ChainWatch::innermost_ = nullptr;

// Fills bottom_up with the slot's chain, lowest layer first. Returns the number of layers.
std::size_t bottom_up_layers(const FdSlot& slot, sockTLC* (&bottom_up)[kMaxLayers]) {
  std::size_t depth = 0;
  for (sockTLC* layer = slot_tlc(slot); layer; layer = layer->next) bottom_up[depth++] = layer;
  std::reverse(bottom_up, bottom_up + depth);
  return depth;
}

}  // namespace

void tlc_chain_changed(int fd, ChainChange change) { ChainWatch::note(fd, change); }

int tlc_wrap_from(int fd, sockTLC* layer, Packet* packet, unsigned* layers_done) {
  *layers_done = 0;
#if !defined(NDEBUG)
  const FdSlot* const slot = fd_slot(fd);
  const uint32_t generation = slot->generation.load(std::memory_order_relaxed);
  const sockTLC* const head = slot_tlc(*slot);
#endif
  for (; layer; layer = layer->next, ++*layers_done) {
    const int r = layer->wrap ? layer->wrap(fd, packet, layer->udata) : 0;
    // The queue being sent holds packet (and send_queue's iovec points into the packets before
    // it): a wrap that closed the fd or changed the layers freed them, and this layer too
    // (libsock.h forbids both). Checked before either is touched again.
    assert(slot->generation.load(std::memory_order_relaxed) == generation &&
           slot_tlc(*slot) == head && "a layer's wrap closed its fd or changed its layers");
    if (r == 1) return 1;  // held by this layer: the ones above it are done
    if (r != 0) {
      errno = EPROTO;
      return -1;
    }
    if (packet->length < 0 || (packet->buffer == packet->internal_memory &&
                               static_cast<std::size_t>(packet->length) > kPacketBytes)) {
      errno = EPROTO;  // the layer overran the packet's memory
      return -1;
    }
  }
  return 0;
}

ssize_t tlc_read(int fd, FdSlot& slot, char* out, std::size_t count, bool* drained) {
  sockTLC* bottom_up[kMaxLayers];
  std::size_t depth = bottom_up_layers(slot, bottom_up);
  // A layer's unwrap may close the fd (then the slot may already belong to another
  // connection) or change the layers (then those in bottom_up may be freed, and slot.extra
  // gone): checked after each.
  const uint32_t generation = slot.generation.load(std::memory_order_relaxed);
  ChainWatch chain(fd);
  char* buf = scratch();
  *drained = false;
  for (;;) {
    // A layer ended the stream earlier (its unwrap returned 1): the socket is read no more,
    // and the layers are called with no input, as after the peer's EOF.
    const bool ended_before = slot.extra && slot.extra->input_ended;
    // MSG_DONTWAIT: as plain reads (read_path.cc), whatever mode the open file is in now.
    ssize_t n = ended_before ? 0 : recv(fd, buf, kRecvBytes, MSG_DONTWAIT);
    // At EOF too the layers get a call: output they still hold from earlier input comes
    // first, and recv keeps returning 0, so EOF is reported once they yield nothing and none
    // may hold more.
    const bool eof = n == 0;
    const bool again = n < 0 && errno == EAGAIN;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (!again) return -1;
      n = 0;  // layers still get a call: they may hold output from earlier input
    }
    // Bytes received are progress for the idle timer even when the layers keep them (a TLS
    // record trickling in): stamped here, not with the plaintext (read_path.cc's note_bytes),
    // or a peer sending a record slower than one per timeout is closed while it sends.
    if (n > 0) {
      if (Reactor* owner = attached_owner(slot)) owner->stamp_activity(slot);
    }
    ssize_t len = n;
    bool layer_ended = false;
    bool full = false;  // a layer filled the buffer: it may hold more output
    for (std::size_t i = 0; i < depth;) {
      sockTLC* layer = bottom_up[i];
      const int r = layer->unwrap ? layer->unwrap(fd, buf, &len, kScratchBytes, layer->udata) : 0;
      if (r == 1) {
        layer_ended = true;  // its stream ended (a TLS close_notify): EOF after the output
      } else if (r != 0) {
        errno = EPROTO;
        return -1;
      }
      if (slot.generation.load(std::memory_order_relaxed) != generation) {
        errno = EBADF;  // closed by the layer; read_input touches the slot no more
        return -1;
      }
      if (len < 0 || static_cast<std::size_t>(len) > kScratchBytes) {
        errno = EPROTO;
        return -1;
      }
      full = full || static_cast<std::size_t>(len) == kScratchBytes;
      ++i;
      const ChainChange change = chain.take();
      if (change == ChainChange::kNone) continue;
      // The layer changed the chain: its output goes on to the layers now above it. Pushed
      // layers are on top, above those that kept their places; a new chain takes it from its
      // lowest layer, and what the freed layers held is gone with them.
      depth = bottom_up_layers(slot, bottom_up);
      if (change == ChainChange::kReplaced) {
        i = 0;
        full = false;
      }
    }
    if (layer_ended && !ended_before) {
      // Kept for the calls that hand out the rest of the output: the layer says it only once.
      SlotExtra* extra = slot_extra_make(slot);  // gone if a layer removed the layers
      if (!extra) return -1;
      extra->input_ended = true;
    }
    if (len > 0) {
      // Nothing waits until the next epoll edge once the socket is empty (EAGAIN, or a short
      // recv) and no layer holds output (the layers' contract: all output they have, up to
      // the buffer) or an end to report.
      const bool short_recv = n > 0 && static_cast<std::size_t>(n) < kRecvBytes;
      *drained = (again || short_recv) && !full && !layer_ended;
      const std::size_t given = std::min(count, static_cast<std::size_t>(len));
      std::copy(buf, buf + given, out);
      if (given < static_cast<std::size_t>(len)) {
        SlotExtra* extra = slot_extra_make(slot);  // gone if a layer removed the layers
        if (!extra) return -1;
        extra->leftover = read_buffer_new(buf + given, static_cast<std::size_t>(len) - given);
        if (!extra->leftover) return -1;
      }
      return static_cast<ssize_t>(given);
    }
    // Without output the call ends at EOF or at EAGAIN (after a short recv the peer's EOF may
    // follow with no edge to announce it), once no layer may hold more: a lower layer that
    // filled the buffer for one above, which kept all of it, is called again.
    if (full) continue;
    if (eof || layer_ended) {
      errno = 0;
      return -1;
    }
    if (again) {
      *drained = true;
      return 0;
    }
  }
}

void tlc_clear_chain(int fd, sockTLC* chain) {
  while (chain) {
    sockTLC* next = chain->next;  // on_clear may free the layer itself
    if (chain->on_clear) chain->on_clear(fd, chain);
    chain = next;
  }
}

std::size_t tlc_depth(const sockTLC* chain) {
  std::size_t depth = 0;
  for (; chain && depth <= kMaxLayers; chain = chain->next) ++depth;
  return depth;
}

}  // namespace engine
