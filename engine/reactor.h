// File: engine/reactor.h
// One thread's event loop: the engine behind the C `struct Reactor` (libreact.h).
//
// A Reactor owns an edge-triggered epoll set, the fds attached to it (their FdSlots), one
// packet pool and two work lists (fds owed another on_data call, fds owed a flush). It is
// the unit a shard will be: one thread drives it, nothing else touches it, except
// request_stop(), which is async-signal-safe.
// Threads: every member function is owner-thread only unless it says otherwise. The owner is
// the thread that last called run_once() (bind_owner_thread() rebinds explicitly).
// Errors: int results are 0 / -1 with errno.
#ifndef ENGINE_REACTOR_H_
#define ENGINE_REACTOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "alloc/block_pool.h"
#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/remote.h"
#include "engine/timer_wheel.h"

namespace engine {

class Reactor;

// Why a connection closed; sock_close_reason() reports it inside on_close. Values match the
// public SOCK_CLOSE_* constants of libsock.h.
enum class CloseReason : int { kLocal = 0, kPeer = 1, kTimeout = 2, kError = 3 };

// The reason of the close whose on_close is running on this thread (kLocal otherwise).
CloseReason current_close_reason();

// A connection's sock_ state, unlinked from its slot so that it can be freed after the slot
// (and perhaps the fd number) has moved on.
struct ConnectionState {
  Packet* queue;
  SlotExtra* extra;  // its layers and buffered input
};
// Unlinks the queue, layers and buffered input and zeroes the write counters, the last error
// and the connection's own watermarks; flags, owner and generation are the caller's to reset.
ConnectionState take_state(FdSlot& slot);
// Frees what take_state() unlinked: returns the packets, runs each layer's on_clear, frees the
// buffered input. Owner thread; may run user code (on_clear).
void free_state(int fd, const ConnectionState& state);

// Closes fd and releases its sock_ state in the order that keeps fd reuse safe: detach from
// epoll, unlink the queue and layers, bump the generation, close(2), on_close (of the fd's
// reactor if attached, else of `notify` when not NULL), then free the queue, run the layers'
// on_clear and free buffered input. Owner thread.
void close_slot(int fd, FdSlot& slot, struct ::Reactor* notify, CloseReason why);

// Runs a call posted from another thread (libsock.cc), on `reactor`'s owner thread.
void run_posted(Reactor& reactor, const RemoteCall& call);
// Frees what a posted call owns without running it (its reactor is gone). Any thread.
void discard_posted(const RemoteCall& call);

// Runs the transport layers' before_close hooks once per connection; true if they queued
// output that must be sent before the close.
bool run_close_hooks(int fd, FdSlot& slot);

class Reactor {
 public:
  // The engine state of `api`, created on first use when `create` (nullptr with errno on
  // failure, or when absent and !create).
  static Reactor* of(struct ::Reactor* api, bool create);
  // The reactor whose run_once() is executing on this thread, or nullptr. Inline: every
  // sock_ call asks (constant-initialised, so no thread_local init check either).
  static Reactor* current() { return current_; }

  explicit Reactor(struct ::Reactor* api);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;
  int init();

  // One loop iteration: wait (0 ms when work is pending), dispatch, run the work lists.
  // Returns the number of events, or -1 (errno 0 once a requested stop has completed and the
  // engine state was destroyed: `this` is gone then).
  int run_once(int timeout_ms);

  // Async-signal-safe, any thread: set a flag and wake the owner.
  void request_stop();
  // Async-signal-safe, any thread: ends the owner's current or next blocking wait.
  void wake();

  // Cross-thread calls (remote.h). set_inbox() before the owner thread starts driving the
  // reactor; with an inbox, sock_ calls from other threads are posted instead of run inline.
  void set_inbox(Inbox* inbox) { inbox_ = inbox; }
  Inbox* inbox() const { return inbox_; }
  // Called on the owner thread for each fd adopted from another thread (kAdopt), once it is
  // open on this reactor. Set before the owner thread starts.
  using OpenHook = void (*)(struct ::Reactor* api, int fd);
  void set_on_open(OpenHook hook) { on_open_ = hook; }
  OpenHook on_open() const { return on_open_; }
  // How long a stop lets queued output drain before closing what is left (default 5 s).
  void set_stop_drain_ms(int64_t ms) { stop_drain_ms_ = ms; }
  // Owner thread: runs one posted call, or drops it (freeing its data) if its fd's generation
  // changed since it was posted.
  void run_remote(const RemoteCall& call) { run_posted(*this, call); }

  // EPOLL_CTL_ADD (or MOD) with the slot's generation; EBADF for fd >= the api's maxfd.
  int attach(int fd, FdSlot& slot);
  int detach(int fd, FdSlot& slot);      // EPOLL_CTL_DEL; keeps the sock_ state
  // Closes now: see close_slot().
  void close_now(int fd, FdSlot& slot, CloseReason why) { close_slot(fd, slot, api_, why); }

  // Work lists. Idempotent (a slot flag says whether the fd is already listed).
  void want_flush(int fd, FdSlot& slot);
  void want_read(int fd, FdSlot& slot);

  // The flush step for one fd: write what the kernel takes (bounded by `budget` bytes),
  // then close if due; on_ready runs when a queue the kernel had refused drains and
  // `notify_ready`. Returns bytes written, or -1 with errno when the fd was closed.
  long flush_fd(int fd, FdSlot& slot, std::size_t budget, bool notify_ready);

  // Limits (libreact.h, struct ReactorLimits), owner thread.
  void set_limits(const ReactorLimits& limits);
  const ReactorLimits& limits() const { return limits_; }

  // The clock behind the reactor's timeouts and its stop deadline, in monotonic milliseconds
  // (CLOCK_MONOTONIC by default), read once per loop iteration. Tests install one they step by
  // hand, so that timeouts are checked to the tick whatever the machine's speed. Owner thread,
  // before any connection is open on the reactor (the wheel and the tick count restart from
  // the new clock's now).
  using ClockFn = int64_t (*)(void* context);
  void set_clock(ClockFn clock, void* context);
  // The reactor's clock in wheel ticks (0 is reserved for "none"), updated once per loop.
  uint32_t now_tick() const { return now_tick_; }
  // Restarts fd's idle timer: a read or a write that made progress.
  void stamp_activity(FdSlot& slot) const { slot.activity_tick = now_tick_ + 1; }
  // Ticks for a duration in ms, rounded up: a timeout never fires early.
  static uint32_t ticks_of(uint64_t ms);
  // An fd just opened on this reactor: its timers start (idle timeout from the limits).
  void start_timers(int fd, FdSlot& slot);
  // Files fd in the wheel for its earliest expiry (idle or deadline), or closes it if that has
  // passed already. Call after changing its timeouts.
  void arm_timer(int fd, FdSlot& slot);
  // Bytes queued on this reactor's connections (the shard's total). count_queued: owner
  // thread; queued_total: any thread (a relaxed snapshot elsewhere).
  void count_queued(int64_t delta) {
    queued_total_.store(queued_total_.load(std::memory_order_relaxed) + static_cast<uint64_t>(delta),
                        std::memory_order_relaxed);
  }
  uint64_t queued_total() const { return queued_total_.load(std::memory_order_relaxed); }
  // After bytes were queued for fd: above its high watermark, reading pauses.
  void check_high_watermark(FdSlot& slot);

  alloc::BlockPool& pool() { return *pool_; }
  struct ::Reactor* api() { return api_; }
  std::size_t attached() const { return attached_; }
  void bind_owner_thread();

 private:
  static inline thread_local Reactor* current_ = nullptr;
  void dispatch(int fd, uint32_t generation, uint32_t events);
  void call_on_data(int fd, FdSlot& slot);
  void on_writable(int fd, FdSlot& slot);
  void run_ready_list();
  void run_flush_list();
  void begin_stop();
  bool finish_stop_if_done();
  int wait_timeout(int timeout_ms) const;
  void tick_clock();
  void expire_timers();
  void resume_if_drained(int fd, FdSlot& slot, bool notify_ready);
  static int64_t monotonic_ms(void* unused);
  int64_t read_clock() const { return clock_(clock_context_); }

  struct ::Reactor* api_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wake() writes it to end a blocking wait
  Inbox* inbox_ = nullptr;
  OpenHook on_open_ = nullptr;
  int64_t stop_drain_ms_;
  std::size_t attached_ = 0;
  std::unique_ptr<alloc::BlockPool> pool_;
  // (generation << 32 | fd) entries, so a closed-and-reused fd is skipped.
  std::vector<uint64_t> ready_;
  std::vector<uint64_t> flush_;
  std::vector<uint64_t> scratch_;  // the list being run, swapped with ready_/flush_
  ReactorLimits limits_;
  uint32_t idle_ticks_ = 0;  // limits_.idle_timeout_ms in ticks: every fd without kOwnIdle
  std::atomic<uint64_t> queued_total_{0};
  ClockFn clock_ = &Reactor::monotonic_ms;
  void* clock_context_ = nullptr;
  int64_t epoch_ms_ = 0;  // the clock's origin: tick 1 starts here
  int64_t now_ms_ = 0;
  uint32_t now_tick_ = 1;
  TimerWheel wheel_{0};
  std::atomic<bool> stop_requested_{false};
  bool stopping_ = false;
  int64_t stop_deadline_ms_ = 0;
};

// Packs an fd and its generation into one word (epoll data, work lists).
inline uint64_t fd_key(int fd, uint32_t generation) {
  return (uint64_t{generation} << 32) | static_cast<uint32_t>(fd);
}
inline int key_fd(uint64_t key) { return static_cast<int>(static_cast<uint32_t>(key)); }
inline uint32_t key_generation(uint64_t key) { return static_cast<uint32_t>(key >> 32); }

}  // namespace engine

#endif  // ENGINE_REACTOR_H_
