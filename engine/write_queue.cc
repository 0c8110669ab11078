#include "engine/write_queue.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "engine/reactor.h"
#include "engine/tlc.h"

namespace engine {
namespace {

// Progress of a file packet, kept in its (otherwise unused) internal_memory.
struct FileSegment {
  int fd;
  off_t offset;
  off_t end;
};
static_assert(sizeof(FileSegment) <= kPacketBytes);

// One sendmsg gathers at most this many packets (well under IOV_MAX = 1024; 64 x 17 KB is
// more than a loopback socket buffer takes at once).
constexpr int kMaxIov = 64;
// sendfile(2) moves at most 0x7ffff000 bytes per call.
constexpr std::size_t kSendfileMax = 0x7ffff000;

FileSegment* segment_of(Packet* p) { return reinterpret_cast<FileSegment*>(p->internal_memory); }

std::size_t packet_bytes(const Packet* p) {
  if (p->metadata.is_file) {
    const auto* seg = reinterpret_cast<const FileSegment*>(p->internal_memory);
    return static_cast<std::size_t>(seg->end - seg->offset);
  }
  return static_cast<std::size_t>(p->length);
}

Packet* chain_tail(Packet* p) {
  while (p->metadata.next) p = p->metadata.next;
  return p;
}

// A queued packet's transport-layer state lives in metadata.rsrv (reserved for the library):
// how many head layers must not wrap it (bytes a layer queued itself with sock_tlc_write), and
// whether it is wrapped yet. Packets are wrapped just before they are first sent, so a
// stateful layer (TLS sequence numbers) sees records in wire order whatever urgent inserts
// and file reads did to the queue.
constexpr unsigned kWrappedBit = 1u << 3;
constexpr unsigned kSkipMask = kWrappedBit - 1;
static_assert(kMaxLayers <= kSkipMask, "the skip count must fit below the wrapped bit");

bool is_wrapped(const Packet* p) { return p->metadata.rsrv & kWrappedBit; }

// True while send_queue has a layer wrapping a packet (the layer may call sock_tlc_write).
thread_local bool t_sealing = false;

// Every change of a connection's queued bytes goes through here, so the owner reactor's total
// (per shard) stays equal to the sum over its attached connections.
void count_queued(FdSlot& slot, int64_t delta) {
  slot.queued_bytes += static_cast<uint64_t>(delta);
  if ((slot.flags & kAttached) && slot.owner) slot.owner->count_queued(delta);
}

// The flush step's counters: one sendmsg call gathering `packets` packets.
void count_writev(const FdSlot& slot, int packets) {
  Reactor* owner = attached_owner(slot);
  if (!owner) return;
  owner->write_counters().writev_calls.add(1);
  owner->write_counters().writev_packets.add(static_cast<uint64_t>(packets));
  if (Profile* p = owner->profile()) p->flush_packets.observe(static_cast<uint64_t>(packets));
}

// Wraps p with its layers unless done already: kWrapped, kHeld (a layer cannot wrap it yet; it
// stays unwrapped, so nothing is sent from it on), or kFailed (errno EPROTO).
enum class Seal { kWrapped, kHeld, kFailed };
Seal seal(int fd, FdSlot& slot, Packet* p) {
  sockTLC* layer = slot_tlc(slot);
  if (!layer || is_wrapped(p) || p->metadata.is_file) return Seal::kWrapped;
  if (p == slot.head && slot.sent > 0) {
    // Partly sent before the layers came: its first bytes went out raw, so the rest goes raw
    // too (wrapped whole, its record would be sent from the raw offset). The layers begin
    // with the next packet.
    p->metadata.rsrv |= kWrappedBit;
    p->metadata.can_interrupt = 0;
    return Seal::kWrapped;
  }
  for (unsigned skip = p->metadata.rsrv & kSkipMask; skip && layer; --skip) layer = layer->next;
  const ssize_t before = p->length;
  unsigned done = 0;
  const int r = tlc_wrap_from(fd, layer, p, &done);
  if (r != 0) count_queued(slot, p->length - before);
  if (r < 0) return Seal::kFailed;
  if (r > 0) {
    // The layers above the holder are done with it: they must not wrap it again, and its
    // record has a place in their sequence, so nothing may be inserted before it.
    p->metadata.rsrv = static_cast<unsigned>(((p->metadata.rsrv & kSkipMask) + done) & kSkipMask);
    if (done) p->metadata.can_interrupt = 0;
    return Seal::kHeld;
  }
  p->metadata.rsrv |= kWrappedBit;
  // Its record now has a place in the layers' sequence: nothing may be inserted before it.
  p->metadata.can_interrupt = 0;
  count_queued(slot, p->length - before);
  return Seal::kWrapped;
}

// Links [first, last] into the queue: at the end, or, when urgent, before the first packet
// that starts a write, has not started sending and is not urgent itself (urgent chains stay
// FIFO among themselves).
void link_chain(FdSlot& slot, Packet* first, Packet* last, bool urgent) {
  Packet** link = &slot.head;
  Packet* at = nullptr;
  if (urgent) {
    for (at = slot.head; at; at = at->metadata.next) {
      if (at->metadata.can_interrupt && !at->metadata.urgent) break;
      link = &at->metadata.next;
    }
  } else if (slot.tail) {
    link = &slot.tail->metadata.next;
  }
  last->metadata.next = at;
  *link = first;
  if (!at) slot.tail = last;
}

// Bytes a write may still merge into the tail packet: 0 when the tail is not plain memory, is
// urgent, has started sending, is wrapped or was queued by a layer. With layers a packet is
// one record of at most kRecordPayload bytes, leaving the headroom for their framing.
std::size_t tail_room(const FdSlot& slot) {
  const Packet* t = slot.tail;
  if (!t || t->buffer != t->internal_memory || t->metadata.external || t->metadata.is_file ||
      t->metadata.urgent || t->metadata.rsrv || (t == slot.head && slot.sent > 0)) {
    return 0;
  }
  const std::size_t limit = slot_tlc(slot) ? kRecordPayload : kPacketBytes;
  const auto used = static_cast<std::size_t>(t->length);
  return used < limit ? limit - used : 0;
}

// Builds a chain of packets holding `length` bytes of data, at most `per_packet` each.
// Returns the head (and *last), or nullptr with packet_new()'s errno (ENOMEM, or ENOBUFS past
// the reactor's memory budget) and nothing allocated.
Packet* build_copies(alloc::BlockPool& pool, const char* data, std::size_t length,
                     std::size_t per_packet, Packet** last) {
  Packet* head = nullptr;
  Packet** link = &head;
  *last = nullptr;
  while (length) {
    Packet* p = packet_new(pool);
    if (!p) {
      const int err = errno;
      packet_chain_free(head);
      errno = err;
      return nullptr;
    }
    const std::size_t n = std::min(length, per_packet);
    std::memcpy(p->internal_memory, data, n);
    p->length = static_cast<ssize_t>(n);
    data += n;
    length -= n;
    *link = p;
    link = &p->metadata.next;
    *last = p;
  }
  return head;
}

// Queues a chain as one write: its first packet is a boundary unless the write began inside
// the tail packet (merged_into_tail).
void queue_write_chain(FdSlot& slot, Packet* first, Packet* last, bool urgent,
                       bool merged_into_tail) {
  for (Packet* p = first; p; p = p->metadata.next) {
    p->metadata.can_interrupt = (p == first) && !merged_into_tail;
    p->metadata.urgent = urgent;
    count_queued(slot, static_cast<int64_t>(packet_bytes(p)));
  }
  link_chain(slot, first, last, urgent);
}

int file_segment_init(Packet* p, FILE* file, std::size_t length) {
  struct stat st;
  const int fd = fileno(file);
  if (fd < 0 || fstat(fd, &st) < 0) return -1;
  // Before ftello, which fails on a pipe or socket with ESPIPE: the contract says EINVAL.
  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return -1;
  }
  const off_t offset = ftello(file);
  if (offset < 0) return -1;
  // A length given is a promise to the peer (a Content-Length): all of it goes, or the
  // connection fails once the file ends early (send_file_packet), never a short stream that
  // the next response would continue. Without one, the file's end now is the end.
  if (length > static_cast<uint64_t>(std::numeric_limits<off_t>::max() - offset)) {
    errno = EINVAL;
    return -1;
  }
  const off_t end = length ? offset + static_cast<off_t>(length) : std::max(st.st_size, offset);
  p->buffer = file;
  p->metadata.is_file = 1;
  *segment_of(p) = FileSegment{fd, offset, end};
  p->length = static_cast<ssize_t>(end - offset);
  return 0;
}

// Removes `n` written bytes from the front of the queue, freeing finished packets.
void consume(FdSlot& slot, std::size_t n) {
  count_queued(slot, -static_cast<int64_t>(n));
  while (Packet* p = slot.head) {
    const std::size_t left = static_cast<std::size_t>(p->length) - slot.sent;
    if (n < left) {
      if (n) {
        slot.sent += n;
        p->metadata.can_interrupt = 0;  // started: nothing may be inserted before it now
      }
      return;
    }
    n -= left;
    slot.head = p->metadata.next;
    if (!slot.head) slot.tail = nullptr;
    slot.sent = 0;
    p->metadata.next = nullptr;
    packet_chain_free(p);
    if (!n && (!slot.head || slot.head->length)) return;
  }
}

// sendfile without dying of SIGPIPE: unlike sendmsg it has no MSG_NOSIGNAL, so the signal is
// blocked for the call and a SIGPIPE it raised is consumed before the old mask returns. It may
// have raised one without failing: a call that moved some chunks before the socket broke (a
// reset in CLOSE_WAIT is EPIPE) returns their bytes, with the signal pending. So any call
// that moved less than asked looks (one more system call, on a full socket too); one that
// moved everything met no error.
ssize_t sendfile_nosignal(int out, int in, off_t* offset, std::size_t count) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  const ssize_t r = sendfile(out, in, offset, count);
  const int err = errno;
  const bool short_call = r < 0 ? err == EPIPE : static_cast<std::size_t>(r) < count;
  if (short_call && !sigismember(&old, SIGPIPE)) {
    const timespec zero{};
    sigtimedwait(&pipe_set, nullptr, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = err;
  return r;
}

SendResult fail_send(FdSlot& slot, int err) {
  set_slot_error(slot, err);
  return SendResult::kError;
}

// Sends (part of) the file packet at the head.
SendResult send_file_packet(int fd, FdSlot& slot, Packet* p, std::size_t budget,
                            std::size_t* written) {
  FileSegment* seg = segment_of(p);
  const std::size_t left = static_cast<std::size_t>(seg->end - seg->offset);
  if (!left) {  // every byte went out as records already
    consume(slot, 0);
    return SendResult::kBudget;
  }
  if (slot_tlc(slot)) {
    // Layers need the bytes in memory: read one record and put it ahead of the file; the
    // write loop wraps it as it sends it.
    Packet* chunk = packet_new(pool_for(&slot));
    if (!chunk) return fail_send(slot, ENOMEM);
    const ssize_t r = pread(seg->fd, chunk->internal_memory, std::min(left, kRecordPayload),
                            seg->offset);
    if (r <= 0) {
      const int err = r == 0 ? EIO : errno;  // r == 0: the file shrank under us
      packet_chain_free(chunk);
      return fail_send(slot, err);
    }
    seg->offset += r;
    chunk->length = r;
    p->metadata.can_interrupt = 0;
    p->length = static_cast<ssize_t>(seg->end - seg->offset);
    chunk->metadata.next = p;
    slot.head = chunk;
    return SendResult::kBudget;  // the caller loops: the chunk is memory now
  }
  const std::size_t want = std::min({left, budget, kSendfileMax});
  const ssize_t r = sendfile_nosignal(fd, seg->fd, &seg->offset, want);
  if (Reactor* owner = attached_owner(slot)) owner->write_counters().sendfile_calls.add(1);
  if (r < 0) {
    if (errno == EAGAIN) return SendResult::kBlocked;
    return errno == EINTR ? SendResult::kBudget : fail_send(slot, errno);
  }
  if (r == 0) return fail_send(slot, EIO);  // the file shrank: never end the stream cleanly
  *written += static_cast<std::size_t>(r);
  p->metadata.can_interrupt = 0;
  p->length = static_cast<ssize_t>(seg->end - seg->offset);
  count_queued(slot, -static_cast<int64_t>(r));
  if (seg->offset == seg->end) {
    slot.head = p->metadata.next;
    if (!slot.head) slot.tail = nullptr;
    p->metadata.next = nullptr;
    packet_chain_free(p);
  }
  // A short count is a full socket or a file that ended early (it shrank); only the next call
  // tells which: EAGAIN (the kernel then owes an EPOLLOUT edge) or 0. Waiting for an edge
  // here would stall forever in the second case, so the caller loops.
  return SendResult::kBudget;
}

// Packet lifetimes (profile.h) on the reactor's profile clock (CLOCK_MONOTONIC; read directly
// off the loop), in microseconds modulo 2^32 (lifetimes up to 71 minutes are exact); 0 marks
// a packet checked out while profiling was off, hence the low bit forced on.
void stamp_checkout(Packet* p) {
  Reactor* r = Reactor::current();
  const int64_t now = r ? r->profile_now_us() : Reactor::monotonic_us();
  p->metadata.rsrv_time = static_cast<uint32_t>(now) | 1u;
}

// Recorded by the reactor whose thread returns the packet (its own, but for packets a user
// freed elsewhere).
void profile_lifetime(const Packet* p) {
  Reactor* r = Reactor::current();
  if (Profile* profile = r ? r->profile() : nullptr) {
    const uint32_t now = static_cast<uint32_t>(r->profile_now_us()) | 1u;
    uint32_t age = now - p->metadata.rsrv_time;
    // Past 2^31 us by the cached clock: stamped by another thread after this reactor cached
    // it (a "negative" age, wrapped), or truly old. The clock read now, which no stamp is
    // later than, tells the age exactly either way (to 71 minutes); rare, so read only here.
    if (age >= uint32_t{1} << 31) {
      age = (static_cast<uint32_t>(Reactor::monotonic_us()) | 1u) - p->metadata.rsrv_time;
    }
    profile->packet_lifetime_us.observe(age);
  }
}

}  // namespace

alloc::BlockPool& fallback_pool() {
  static alloc::BlockPool* pool =
      alloc::BlockPool::create<sizeof(Packet)>(alloc::Sharing::kLocked).release();
  return *pool;
}

alloc::BlockPool& pool_for(const FdSlot* slot) {
  if (slot && slot->owner) return slot->owner->pool();
  if (Reactor* r = Reactor::current()) return r->pool();
  return fallback_pool();
}

Packet* packet_new(alloc::BlockPool& pool) {
  void* block = pool.checkout();
  if (!block) return nullptr;  // errno: ENOMEM, or ENOBUFS beyond the reactor's memory budget
  auto* p = static_cast<Packet*>(block);
  p->length = 0;
  p->buffer = p->internal_memory;
  p->metadata = Packet::PacketMetadata{};
  if (profiling_on()) stamp_checkout(p);
  return p;
}

void packet_chain_free(Packet* chain) {
  while (chain) {
    Packet* next = chain->metadata.next;
    if (chain->metadata.is_file && chain->buffer) {
      std::fclose(static_cast<FILE*>(chain->buffer));
    } else if (chain->metadata.external) {
      std::free(chain->buffer);
    }
    if (chain->metadata.rsrv_time && profiling_on()) profile_lifetime(chain);
    alloc::BlockPool::give_back(chain);
    chain = next;
  }
}

int queue_copy(FdSlot& slot, const void* data, std::size_t length, bool urgent,
               bool rest_of_write) {
  auto* bytes = static_cast<const char*>(data);
  alloc::BlockPool& pool = pool_for(&slot);
  const std::size_t merged = urgent ? 0 : std::min(length, tail_room(slot));
  Packet* last = nullptr;
  Packet* chain = build_copies(pool, bytes + merged, length - merged,
                               slot_tlc(slot) ? kRecordPayload : kPacketBytes, &last);
  if (!chain && length > merged) return -1;
  if (merged) {  // nothing can fail past this point: merge, then link
    Packet* t = slot.tail;
    std::memcpy(t->internal_memory + t->length, bytes, merged);
    t->length += static_cast<ssize_t>(merged);
    count_queued(slot, static_cast<int64_t>(merged));
  }
  if (chain) queue_write_chain(slot, chain, last, urgent, merged > 0 || rest_of_write);
  return 0;
}

int queue_move(FdSlot& slot, void* buffer, std::size_t length, bool urgent) {
  if (slot_tlc(slot)) {  // layers wrap records in packet memory: copy, then free now
    const int r = queue_copy(slot, buffer, length, urgent);
    const int err = errno;
    std::free(buffer);
    errno = err;
    return r;
  }
  Packet* p = packet_new(pool_for(&slot));
  if (!p) {
    const int err = errno;  // the write's result, not free()'s
    std::free(buffer);
    errno = err;
    return -1;
  }
  p->buffer = buffer;
  p->length = static_cast<ssize_t>(length);
  p->metadata.external = 1;
  queue_write_chain(slot, p, p, urgent, false);
  return 0;
}

ssize_t queue_file(FdSlot& slot, FILE* file, std::size_t length, bool urgent) {
  Packet* p = packet_new(pool_for(&slot));
  if (!p) {
    const int err = errno;  // the write's result, not fclose()'s
    std::fclose(file);
    errno = err;
    return -1;
  }
  if (file_segment_init(p, file, length) < 0) {
    const int err = errno;
    std::fclose(file);
    alloc::BlockPool::give_back(p);
    errno = err;
    return -1;
  }
  const ssize_t bytes = p->length;
  if (bytes == 0) {  // nothing left to send: done already
    packet_chain_free(p);
    return 0;
  }
  queue_write_chain(slot, p, p, urgent, false);
  return bytes;
}

int check_chain(const Packet* chain) {
  for (const Packet* p = chain; p; p = p->metadata.next) {
    // Past its internal memory lie the packet's metadata and the pool's next packet (another
    // connection's data); a file packet's FILE* is all that tells its bytes.
    const char* const own = p->internal_memory;
    const char* const at = static_cast<const char*>(p->buffer);
    const bool in_own = at >= own && at < own + kPacketBytes;
    const bool unsendable =
        p->length < 0 || (!p->buffer && (p->length || p->metadata.is_file)) ||
        (in_own && static_cast<std::size_t>(p->length) > kPacketBytes - (at - own));
    if (unsendable) {
      errno = EINVAL;
      return -1;
    }
  }
  return 0;
}

int queue_chain(FdSlot& slot, Packet* chain) {
  if (check_chain(chain) < 0) return -1;
  for (Packet* p = chain; p; p = p->metadata.next) {
    if (p->metadata.is_file && file_segment_init(p, static_cast<FILE*>(p->buffer), 0) < 0) {
      return -1;
    }
  }
  for (Packet* p = chain; p; p = p->metadata.next) p->metadata.rsrv = 0;
  const bool urgent = chain->metadata.urgent;
  queue_write_chain(slot, chain, chain_tail(chain), urgent, false);
  return 0;
}

int queue_layer_bytes(FdSlot& slot, const char* data, std::size_t length, unsigned skip_layers) {
  // The record goes after everything its layer has seen (wrapped packets, records it or a
  // layer below it queued) and before the first packet it has not: data wrapped later must
  // follow it on the wire. A file packet's unread bytes are such data, while there are layers
  // to read it through; without any, everything queued is seen (raw bytes, files sent as they
  // are, sendfile's progress in the file's segment and not in slot.sent).
  const bool layered = slot_tlc(slot) != nullptr;
  Packet** link = &slot.head;
  Packet* before = nullptr;
  Packet* at = slot.head;
  for (; at; before = at, link = &at->metadata.next, at = at->metadata.next) {
    const bool seen = !layered || is_wrapped(at) || (at == slot.head && slot.sent > 0) ||
                      (!at->metadata.is_file && (at->metadata.rsrv & kSkipMask) >= skip_layers);
    if (!seen) break;
  }
  // Small records (alerts, KeyUpdates, tickets) share a packet: the one just before the
  // insertion point when the same layer queued it and it has not started sending. Not from
  // inside a wrap: send_queue may have gathered that packet's length into its iovec already.
  if (before && !t_sealing && !is_wrapped(before) && !before->metadata.is_file &&
      (before->metadata.rsrv & kSkipMask) == skip_layers && before->buffer == before->internal_memory &&
      !(before == slot.head && slot.sent > 0)) {
    const auto used = static_cast<std::size_t>(before->length);
    const std::size_t n = std::min(length, used < kRecordPayload ? kRecordPayload - used : 0);
    std::memcpy(before->internal_memory + used, data, n);
    before->length += static_cast<ssize_t>(n);
    count_queued(slot, static_cast<int64_t>(n));
    data += n;
    length -= n;
  }
  while (length) {
    Packet* p = packet_new(pool_for(&slot));
    if (!p) return -1;  // errno ENOMEM or ENOBUFS; what was queued stays, in order
    const std::size_t n = std::min(length, kRecordPayload);
    std::memcpy(p->internal_memory, data, n);
    p->length = static_cast<ssize_t>(n);
    p->metadata.rsrv = skip_layers & kSkipMask;
    p->metadata.can_interrupt = 0;  // an urgent write inserted before it would be misordered
    p->metadata.next = at;
    *link = p;
    if (!at) slot.tail = p;
    link = &p->metadata.next;
    count_queued(slot, p->length);
    data += n;
    length -= n;
  }
  return 0;
}

SendResult send_queue(int fd, FdSlot& slot, std::size_t budget, std::size_t* written) {
  const std::size_t start = *written;
  while (slot.head) {
    const std::size_t spent = *written - start;
    if (spent >= budget) return SendResult::kBudget;
    Packet* p = slot.head;
    if (p->metadata.is_file) {
      const SendResult r = send_file_packet(fd, slot, p, budget - spent, written);
      if (r != SendResult::kBudget) return r;
      continue;
    }
    iovec iov[kMaxIov];
    int n = 0;
    std::size_t total = 0;
    bool held = false;
    Packet** link = &slot.head;  // the link to q: a layer record queued inside wrap changes it
    for (Packet* q = p; q && !q->metadata.is_file && n < kMaxIov && total < budget - spent;
         link = &q->metadata.next, q = q->metadata.next) {
      t_sealing = true;
      const Seal sealed = seal(fd, slot, q);
      t_sealing = false;
      if (sealed == Seal::kFailed) return fail_send(slot, EPROTO);
      // The wrap queued a layer record (sock_tlc_write), which went before q: send what is
      // gathered, then the record, then q, in the order of the queue, which consume() follows.
      if (*link != q) break;
      if (sealed == Seal::kHeld) {
        held = true;
        break;
      }
      const std::size_t skip = q == p ? slot.sent : 0;
      const std::size_t len = static_cast<std::size_t>(q->length) - skip;
      if (!len) continue;
      iov[n].iov_base = static_cast<char*>(q->buffer) + skip;
      iov[n].iov_len = len;
      total += len;
      ++n;
    }
    if (!total) {
      if (held) return SendResult::kHeld;
      consume(slot, 0);  // only empty packets up to the next file packet (or the end)
      continue;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n);
    const ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    count_writev(slot, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return SendResult::kBlocked;
      return fail_send(slot, errno);
    }
    *written += static_cast<std::size_t>(r);
    consume(slot, static_cast<std::size_t>(r));
    // After a short write the loop asks again: only EAGAIN proves the buffer is full (space
    // may have freed meanwhile), and it costs a syscall only when the socket is backed up.
  }
  return SendResult::kDrained;
}

}  // namespace engine
