// File: engine/fd_table.h
// The process-wide table of per-fd state, indexed by fd number.
//
// Memory: the table is a fixed directory of page pointers (in .bss, untouched until used)
// and pages of kSlotsPerPage slots allocated (line-aligned) on first use, so a process that never opens fd
// 500,000 never pays for it and nothing is sized capacity x entry up front. Pages are never
// freed (fd numbers are reused densely by the kernel).
// Threads: fd_slot()/fd_slot_make() may be called from any thread (page installation is a
// compare-and-swap). A slot's fields belong to the thread that owns the fd (its reactor's
// thread, see libsock.h); `generation` is atomic because other threads read it to detect
// that an fd was closed and its number reused.
#ifndef ENGINE_FD_TABLE_H_
#define ENGINE_FD_TABLE_H_

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "alloc/cache_line.h"

struct Packet;
struct sockTLC;

namespace engine {

class Reactor;
struct ReadBuffer;

// Slot state bits. kOpen: opened with the sock_ API. kAttached: registered with `owner`'s
// epoll set. The rest describe the connection's progress: the reactor (reactor.cc), the read
// path (read_path.cc) and the write path (write_path.cc, write_queue.cc) set them.
enum SlotFlag : uint32_t {
  kOpen = 1u << 0,
  kAttached = 1u << 1,
  kClosing = 1u << 2,       // sock_close(): close once the queue is empty; no new writes
  kEof = 1u << 3,           // the peer finished sending: close once the queue is empty
  kFailed = 1u << 4,        // a read or write failed: close at the next flush step
  kConnecting = 1u << 5,    // sock_connect() in progress: no flush until connected
  kReadPending = 1u << 6,   // input may be waiting (edge seen, EAGAIN not yet)
  kReadProgress = 1u << 7,  // sock_read/sock_accept returned something in this callback
  kOnDataAgainList = 1u << 8,  // listed for another on_data call (Reactor::want_on_data_again)
  kOnFlushList = 1u << 9,   // queued for the flush step
  kWriteBlocked = 1u << 10, // the kernel said EAGAIN: on_ready once the queue drains
  kHangup = 1u << 11,       // EPOLLHUP/EPOLLERR seen: close once input is consumed
  kCloseHooksRun = 1u << 12, // before_close of the transport layers already ran
  kPeerShut = 1u << 13,      // EPOLLRDHUP seen: an EOF waits behind the data
  kErrorSeen = 1u << 14,     // EPOLLERR seen: a hang-up close is an error, not the peer's
  kPaused = 1u << 15,        // queued bytes passed the high watermark: reading waits
  kOwnIdle = 1u << 16,       // the idle timeout is extra->idle_ticks, not the reactor's
  kSentDirect = 1u << 17,    // a direct first write was made; later ones queue (write_path.cc)
  kUrgentSeen = 1u << 18,    // EPOLLPRI seen: TCP urgent data came, reads stop short at its mark
  // A listener's slot: TCP_NODELAY is set on the listener, so accepted sockets inherit it
  // (accept.h).
  kListenerNoDelay = 1u << 19,
  // Attached but not in the epoll set, and no timer filed: a connection whose first input was
  // read at its accept (Reactor::read_first_input) and was to close at the flush step.
  kUnwatched = 1u << 20
};

// Per-connection settings and state that most connections never use, allocated on first use
// (sock_set_timeout, sock_set_deadline, sock_set_watermarks, a transport layer) and freed at
// close or once everything in it is back to its default, so that an ordinary connection's
// slot stays one cache line (idle keep-alive connections are the bulk of a busy server's).
// Owned by the slot; owner thread only.
struct SlotExtra {
  sockTLC* tlc = nullptr;
  ReadBuffer* leftover = nullptr;  // unwrapped plaintext the caller's buffer could not take
  // A layer's unwrap returned 1 (its stream ended): the socket is read no more, and sock_read
  // reports EOF once the layers yield no more output (tlc_read).
  bool input_ended = false;
  // With layers: how many of them, from the head, had their before_close called
  // (connection.cc: one at a time, each once the queue is empty).
  uint8_t close_hooks_run = 0;
  // With kOwnIdle: this connection's idle timeout in ticks (0: none), instead of the reactor's.
  uint32_t idle_ticks = 0;
  uint32_t deadline_tick = 0;  // 0: none
  // The lingering close (linger.cc). kWanted: sock_close_lingering() asked for it, whether or
  // not input waits when the queue has drained. kLingering: the write side is shut, input is
  // discarded (kPaused keeps on_data from running), and the fd closes at the peer's EOF or the
  // deadline. Never cleared: the close ends it.
  enum class Linger : uint8_t { kNo, kWanted, kLingering };
  Linger linger = Linger::kNo;
  // kLingering: the tick by which the fd closes whatever the peer does (kLingerMaxMs after the
  // linger began). Apart from deadline_tick, which sock_set_deadline() may clear or move.
  uint32_t linger_end_tick = 0;
  // Backpressure: queued bytes above which reading pauses, at or below which it resumes
  // (0: the reactor's limits).
  uint32_t high_watermark = 0;
  uint32_t low_watermark = 0;
};

// One cache line, aligned to it: the owner thread writes its slots on every read and write,
// and other threads read neighbouring slots' generation and owner to route their calls, so two
// connections of different shards never share a line (the pages are line-aligned too).
struct alignas(alloc::kCacheLineBytes) FdSlot {
  // Changes whenever the fd is opened or closed, and when reactor_add attaches a plain fd that
  // no reactor held (to the next even value), so events and calls that carry an old value
  // are recognised as stale after the number is reused. Odd while the fd is open with the sock_
  // API, even otherwise: any thread can tell from this one atomic whether a call may target
  // the fd. Owner-thread writes use release, and a thread taking over the slot (a new owner
  // after the number was reused) reads it with acquire before touching anything else, which
  // orders the previous owner's last writes before its own.
  std::atomic<uint32_t> generation;
  // SlotFlag bits, and above kErrorShift the errno of the failure behind kFailed
  // (slot_error()): one word, so clearing the flags clears the error too.
  uint32_t flags;
  // The reactor the fd is attached to. Written on the owner thread through set_owner()
  // (atomic, release) and read by other threads to route their calls (load_owner()).
  Reactor* owner;
  // The write queue: a chain through Packet::metadata.next. `sent` bytes of `head` are
  // already written (64-bit: moved buffers and files may exceed 4 GiB).
  Packet* head;
  Packet* tail;
  uint64_t sent;
  uint64_t queued_bytes;
  SlotExtra* extra;  // nullptr: every setting at its default, no layers
  // Timeouts, in ticks of the owner reactor's clock (TimerWheel::kTickMs; 32 bits last 6.8
  // years; 0 means none). The idle timer restarts on every read and every write that makes
  // progress, by storing activity_tick only: the wheel entry (due at timer_due_tick) checks
  // the real expiry when it fires, so resetting costs no wheel operation.
  uint32_t activity_tick;
  uint32_t timer_due_tick;
};
// What an idle keep-alive connection costs the engine (bench/idle_rss.sh): one cache line.
static_assert(sizeof(FdSlot) == alloc::kCacheLineBytes,
              "FdSlot grew past one cache line: move the field to SlotExtra");
static_assert(alignof(FdSlot) == alloc::kCacheLineBytes, "a slot starts a cache line");

// The errno of a failure, kept in the flags word: Linux errno values are far below 2048 (the
// highest is 133, EHWPOISON; the kernel reserves up to MAX_ERRNO, 4095), so 11 bits above the
// flags hold any of them.
inline constexpr unsigned kErrorShift = 21;
inline constexpr uint32_t kMaxErrno = 2047;
static_assert(kUnwatched < (1u << kErrorShift), "a flag bit overlaps the error field");
static_assert((uint64_t{kMaxErrno} << kErrorShift) <= UINT32_MAX, "the error field overflows");

inline int slot_error(const FdSlot& slot) { return static_cast<int>(slot.flags >> kErrorShift); }
// Records err (EIO if it is not a valid errno) as the failure behind kFailed.
inline void set_slot_error(FdSlot& slot, int err) {
  const uint32_t e =
      (err > 0 && static_cast<uint32_t>(err) <= kMaxErrno) ? static_cast<uint32_t>(err) : EIO;
  slot.flags = (slot.flags & ((1u << kErrorShift) - 1)) | (e << kErrorShift);
}

inline sockTLC* slot_tlc(const FdSlot& slot) { return slot.extra ? slot.extra->tlc : nullptr; }
// The tick by which fd closes whatever it does (0: none): its deadline, or a linger's end.
inline uint32_t slot_deadline(const FdSlot& slot) {
  if (!slot.extra) return 0;
  const uint32_t deadline = slot.extra->deadline_tick, linger_end = slot.extra->linger_end_tick;
  return (!deadline || (linger_end && linger_end < deadline)) ? linger_end : deadline;
}
// slot.extra, allocated (all defaults) if it does not exist yet; nullptr with errno ENOMEM.
SlotExtra* slot_extra_make(FdSlot& slot);
// Frees slot.extra once nothing in it differs from the defaults. Owner thread.
void slot_extra_trim(FdSlot& slot);

// Largest fd the table can index: the directory holds kMaxFds / kSlotsPerPage pointers.
inline constexpr std::size_t kSlotsPerPage = 1024;
inline constexpr std::size_t kMaxFds = std::size_t{1} << 22;
static_assert(kMaxFds % kSlotsPerPage == 0);

// The slot of fd if its page exists, else nullptr (also for fd < 0 or fd >= kMaxFds).
FdSlot* fd_slot(int fd);

inline bool is_open_generation(uint32_t generation) { return generation & 1u; }

// Owner thread: moves the generation to the next odd (open) or even (closed) value.
inline void mark_open(FdSlot& slot) {
  const uint32_t g = slot.generation.load(std::memory_order_relaxed);
  slot.generation.store(g + (is_open_generation(g) ? 2 : 1), std::memory_order_release);
}
inline void mark_closed(FdSlot& slot) {
  const uint32_t g = slot.generation.load(std::memory_order_relaxed);
  slot.generation.store(g + (is_open_generation(g) ? 1 : 2), std::memory_order_release);
}

inline void set_owner(FdSlot& slot, Reactor* owner) {
  std::atomic_ref<Reactor*>(slot.owner).store(owner, std::memory_order_release);
}
inline Reactor* load_owner(FdSlot& slot) {
  return std::atomic_ref<Reactor*>(slot.owner).load(std::memory_order_acquire);
}

// The slot of fd, allocating its page if needed. nullptr with errno EBADF (fd out of range)
// or ENOMEM.
FdSlot* fd_slot_make(int fd);

// Calls fn(fd, slot) for every slot whose page exists. fn reads a slot's fields only as its
// thread may (slot.owner first, with load_owner(), for a slot another thread may hold): the
// stop, the profiler's top list, tests.
template <typename Fn>
void fd_table_for_each(Fn&& fn);

// --- implementation details ---
namespace internal {
inline constexpr std::size_t kPages = kMaxFds / kSlotsPerPage;
extern std::atomic<FdSlot*> g_pages[kPages];
}  // namespace internal

inline FdSlot* fd_slot(int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= kMaxFds) return nullptr;
  const auto ufd = static_cast<std::size_t>(fd);
  // Acquire pairs with the release CAS in fd_slot_make: the page's zeroed slots are visible.
  FdSlot* page = internal::g_pages[ufd / kSlotsPerPage].load(std::memory_order_acquire);
  return page ? page + ufd % kSlotsPerPage : nullptr;
}

template <typename Fn>
void fd_table_for_each(Fn&& fn) {
  for (std::size_t p = 0; p < internal::kPages; ++p) {
    FdSlot* page = internal::g_pages[p].load(std::memory_order_acquire);
    if (!page) continue;
    for (std::size_t i = 0; i < kSlotsPerPage; ++i) {
      fn(static_cast<int>(p * kSlotsPerPage + i), page[i]);
    }
  }
}

}  // namespace engine

#endif  // ENGINE_FD_TABLE_H_
