// File: engine/reactor.h
// One thread's event loop: the engine behind the C `struct Reactor` (libreact.h), and what a
// shard (shards/) drives.
//
// A Reactor owns an edge-triggered epoll set, the fds attached to it (their FdSlots), one
// packet pool, a timer wheel, two work lists (fds owed another on_data call, fds owed a
// flush) and an inbox (inbox.h), the one door through which other threads reach it.
// Threads: its owner thread is the thread that created it, or the one that last called
// run_once() (bind_owner_thread() rebinds explicitly); only that thread touches what the
// reactor owns. Every member function is owner-thread only unless it says otherwise; debug
// builds assert it where it matters (attach, flush scheduling, close, timers). Other threads
// reach the reactor through sock_ calls, which post to its inbox (routing.h), and through the
// members marked "any thread".
// Errors: int results are 0 / -1 with errno.
#ifndef ENGINE_REACTOR_H_
#define ENGINE_REACTOR_H_

#include <atomic>
#include <cassert>
#include <cstdint>
#include <memory>
#include <vector>

#include "alloc/block_pool.h"
#include "alloc/cache_line.h"
#include "alloc/owner_counter.h"
#include "engine/connection.h"
#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/profile.h"
#include "engine/timer_wheel.h"

namespace engine {

class Inbox;

// The write path's always-on counters (metrics.h exports them): owner-thread writes, any-thread
// reads (alloc::OwnerCounter).
struct WriteCounters {
  alloc::OwnerCounter direct;          // writes that went to the kernel at once (write_path.cc)
  alloc::OwnerCounter queued;          // writes that queued (all or their rest)
  alloc::OwnerCounter writev_calls;    // sendmsg calls of the flush step
  alloc::OwnerCounter writev_packets;  // packets those calls gathered
  alloc::OwnerCounter sendfile_calls;
};

// How long each loop iteration worked, always on (metrics.h exports them): from the wait's
// return to the iteration's end (posted calls, callbacks, flushes, timers), the wait itself
// excluded. A long one is a stall: every connection of the reactor waited that long for it.
// Owner-thread writes, any-thread reads (relaxed snapshots: a reader may see a count that a
// concurrent observe raised and a sum or longest it has not yet).
struct LoopCounters {
  Profile::TimeHistogram busy_us;       // the profiler's time buckets, 1 us to 67 s
  alloc::OwnerCounter longest_busy_us;  // the longest iteration so far
};

class Reactor {
 public:
  // The engine state of `api`, created on first use when `create` (nullptr with errno on
  // failure, or when absent and !create). The creating thread is the owner until a run_once().
  static Reactor* of(struct ::Reactor* api, bool create);
  // The reactor whose run_once() is executing on this thread, or nullptr. Inline: every
  // sock_ call asks (constant-initialised, so no thread_local init check either).
  static Reactor* current() { return current_; }

  explicit Reactor(struct ::Reactor* api);
  // Discards the calls still in an inbox it made (freeing what they carry). Owner thread, with
  // no other thread posting or about to: a post racing with the destruction writes freed
  // memory (a shard's inbox, given to use_inbox(), outlives it for that reason).
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;
  int init();

  // One loop iteration: wait (0 ms when work is pending; timeout_ms < 0: no limit), run the
  // calls other threads posted, dispatch, run the work lists. Returns the number of events,
  // or -1 (errno 0 once a requested stop has completed and the engine state was destroyed:
  // `this` is gone then).
  int run_once(int timeout_ms);

  // Async-signal-safe, any thread: set a flag and wake the owner.
  void request_stop();
  // Async-signal-safe, any thread: ends the owner's current or next blocking wait.
  void wake();
  // Any thread: whether the calling thread is the owner.
  bool is_owner_thread() const { return pool_->is_owner_thread(); }
  // Makes the calling thread the owner. The previous owner's last use must happen-before this.
  void bind_owner_thread();
  // No thread owns it until the next bind_owner_thread(): see BlockPool::release_owner_thread.
  // Thread: owner, at its end.
  void release_owner_thread() { pool_->release_owner_thread(); }
  // Debug builds: aborts when called off the owner thread.
  void assert_owner_thread() const { assert(is_owner_thread()); }

  // Any thread: the reactor's inbox, made on first need (the first call posted to it), so a
  // reactor that never hears from another thread pays nothing for it. *made is set when this
  // call made it: the caller then wakes the owner once after posting (see post() in
  // routing.cc). nullptr with errno ENOMEM when it cannot be made.
  Inbox* inbox(bool* made);
  // Before the owner starts: posts go to `inbox`, which the caller owns and keeps beyond this
  // reactor (a shard keeps its inbox until its thread has joined, so that a call posted while
  // the shard stops lands in live memory and is discarded there, not in a freed inbox).
  void use_inbox(Inbox* inbox);

  // Called on the owner thread for each fd opened here through open_accepted() (engine/accept.h:
  // handed over by another thread, or accepted on this one) or by a posted sock_open or
  // sock_connect from another thread, once it is open. Set before the owner starts.
  using OpenHook = void (*)(struct ::Reactor* api, int fd);
  void set_on_open(OpenHook hook) { on_open_ = hook; }
  OpenHook on_open() const { return on_open_; }
  // Owner thread: the fds other threads handed over with open_accepted() (kOpenBatch posts)
  // that this reactor has taken off its inbox so far, opened or, when the open failed, closed.
  // The handing thread's own count minus this is what is still in flight to it (least-loaded
  // placement, shards/server.cc); a sock_open from another thread (kOpen) is not counted.
  uint64_t handed_over_taken() const { return handed_over_taken_; }
  void took_handed_over(std::size_t n) { handed_over_taken_ += n; }
  // How long a stop lets queued output drain before closing what is left.
  void set_stop_drain_ms(int64_t ms) { stop_drain_ms_ = ms; }
  // A completed stop leaves this object alive (and the api's _impl set) instead of deleting
  // it: its owner deletes it later, after rebinding ownership (a shard, after joining its
  // thread, so that other shards' threads may still read its counters until then).
  void set_keep_after_stop() { keep_after_stop_ = true; }

  // EPOLL_CTL_ADD (or MOD) with the slot's generation; EBADF for fd >= the api's maxfd.
  // `watch` false: the fd is the reactor's (owner, counters, timers) but epoll hears of it only
  // from read_first_input() (connection.h, open_with_input_here).
  int attach(int fd, FdSlot& slot, bool watch = true);
  // For an fd attached unwatched with its first input waiting: on_data at once, then the
  // epoll set, unless that callback closed or detached it, or sock_close()d it with nothing
  // left to send (the next flush step closes it): a short connection served whole
  // never costs an epoll_ctl, nor a timer wheel entry. A failure to add it closes it
  // (CloseReason::kError).
  void read_first_input(int fd, FdSlot& slot);
  // Leaves the epoll set (EPOLL_CTL_DEL) and keeps the sock_ state. `closing`: close(2) follows
  // at once and takes the fd out of the set itself, so the syscall is skipped. Hazard: a copy of
  // the fd (dup, or a child forked without exec) keeps the registration alive; its events
  // carry the closed generation and dispatch() drops them, and a new fd on the number is added
  // as a registration of its own (epoll keys them by file and number).
  int detach(int fd, FdSlot& slot, bool closing = false);
  // Closes now: see close_slot().
  void close_now(int fd, FdSlot& slot, CloseReason why) { close_slot(fd, slot, api_, why); }
  // The lingering close (linger.cc), from close_if_due(): for a sock_close()d fd whose queue
  // drained while the peer's input waits unread (or that sock_close_lingering() closed), shuts the
  // write side (the peer's EOF follows what was sent) and keeps fd, discarding its input, until the
  // peer's EOF, kLingerMs of quiet or kLingerMaxMs; on_data no longer runs. True if fd lingers (now
  // or already); false: close it at once (no reset to avoid, a stop with everything sent
  // acknowledged, or no memory, shutdown or epoll set for the wait). Owner thread.
  bool linger(int fd, FdSlot& slot);

  // The work lists. Idempotent (a slot flag says whether the fd is already listed).
  // want_flush: send fd's queue at this iteration's flush step.
  void want_flush(int fd, FdSlot& slot);
  // want_on_data_again: call on_data for fd again next iteration (its callback read without
  // reaching EAGAIN, so edge-triggered epoll will not report the input that may remain).
  void want_on_data_again(int fd, FdSlot& slot);
  // After a direct write to fd (write_path.cc): the writes that follow queue, to leave together
  // at the flush step, until fd's next on_data call starts, its flush step, or this
  // iteration's end. A write from fd's own on_data is not listed: an fd that reads ends the
  // mark at its next on_data (and if only other callbacks write to it after that, their first
  // write queues once, and the flush step ends the mark). Any other (a peer's callback, a
  // posted call, on_ready, a timer) is listed, so that an fd that never reads does not queue
  // every other write for good.
  void note_direct_write(int fd, FdSlot& slot) {
    if (fd == serving_fd_) {
      slot.flags |= kSentDirect;
    } else {
      list_sent_direct(slot);
    }
  }

  // Whether another reactor that another thread drives holds slot: its epoll set, its
  // counters and the slot are that thread's alone, so attach() and the opens refuse the fd
  // (EEXIST) instead of moving it; a reactor this thread drives too gives it up. One atomic
  // load, before any of the slot's other fields is read. Any thread.
  bool held_by_other_thread(FdSlot& slot) const {
    Reactor* const held = load_owner(slot);
    return held && held != this && !held->is_owner_thread();
  }

  // The flush step for one fd: send what the kernel takes (bounded by `budget` bytes), then
  // close if due; with `notify_ready`, on_ready runs last, once, when a pause ended or a queue
  // the kernel had refused drained, if the fd is still open. Returns bytes written, or -1
  // with errno when the fd was closed.
  long flush_fd(int fd, FdSlot& slot, std::size_t budget, bool notify_ready);

  // Limits (libreact.h, struct ReactorLimits).
  void set_limits(const ReactorLimits& limits);

  // The clock behind the reactor's timeouts and its stop deadline, in monotonic milliseconds
  // (CLOCK_MONOTONIC by default), read once per loop iteration. Tests install one they step by
  // hand, so that timeouts are checked to the tick whatever the machine's speed. Before any
  // connection is open on the reactor (the wheel and the tick count restart from the new
  // clock's now).
  using ClockFn = int64_t (*)(void* context);
  void set_clock(ClockFn clock, void* context);
  // The reactor's clock in wheel ticks (0 is reserved for "none"), updated once per loop.
  uint32_t now_tick() const { return now_tick_; }
  // Restarts fd's idle timer: a read or a write that made progress.
  void stamp_activity(FdSlot& slot) const { slot.activity_tick = now_tick_ + 1; }
  // Ticks for a duration in ms, rounded up: a timeout never fires early. Any thread.
  static uint32_t ticks_of(uint64_t ms);
  // An fd just opened on this reactor: its timers start (idle timeout from the limits).
  // `arm` false: the idle time counts from now, but the wheel hears of it only when
  // read_first_input() keeps the connection (a short one never costs a wheel entry).
  void start_timers(int fd, FdSlot& slot, bool arm = true);
  // Files fd in the wheel for its earliest expiry (idle or deadline). One already past closes
  // fd here with `close_if_due`; without it (the application's own calls: sock_set_timeout,
  // sock_set_deadline, reactor_add) it is filed as due, and the timer step closes fd, so that
  // on_close never runs inside such a call. Call after changing its timeouts.
  void arm_timer(int fd, FdSlot& slot, bool close_if_due = true);
  // An open connection that reactor_add brings back (after reactor_remove) or over from
  // another reactor of this thread, or an unattached one whose graceful close this reactor
  // drains (sock_close): its own idle timeout and its deadline go on (one tick
  // origin for all, shared_epoch_ms()), a deadline that passed meanwhile closing it at the
  // timer step; its idle time counts from now (no reactor saw its reads and writes).
  void resume_timers(int fd, FdSlot& slot);

  // Bytes queued on this reactor's connections (the shard's total). count_queued: owner
  // thread; queued_total: any thread (a relaxed snapshot elsewhere).
  void count_queued(int64_t delta) {
    queued_total_.store(
        queued_total_.load(std::memory_order_relaxed) + static_cast<uint64_t>(delta),
        std::memory_order_relaxed);
  }
  uint64_t queued_total() const { return queued_total_.load(std::memory_order_relaxed); }
  // After bytes were queued for fd: above its high watermark, reading pauses.
  void check_high_watermark(FdSlot& slot);

  alloc::BlockPool& pool() { return *pool_; }
  // Any thread (the pool is made in init() and lives as long as the reactor).
  const alloc::BlockPool& pool() const { return *pool_; }
  struct ::Reactor* api() { return api_; }
  // Connections attached here. Any thread (a relaxed snapshot elsewhere).
  std::size_t attached() const { return attached_.get(); }
  WriteCounters& write_counters() { return write_counters_; }
  // trim() calls so far. Any thread (a relaxed snapshot elsewhere).
  uint64_t trims() const { return trims_.get(); }
  const WriteCounters& write_counters() const { return write_counters_; }
  // Any thread (relaxed snapshots elsewhere).
  const LoopCounters& loop_counters() const { return loop_counters_; }

  // The profiler (profile.h). profile(): this reactor's Profile while profiling is on (made on
  // first need), else nullptr; owner thread. profile_snapshot(): any thread, nullptr until
  // profiling first ran here. profile_now_us(): the profile clock (CLOCK_MONOTONIC): for the
  // callbacks, the time the iteration began (the loop reads it anyway, LoopCounters); for the
  // flush step, read again when a hook first asks; read afresh outside the loop; owner thread.
  Profile* profile() {
    if (!profiling_on()) return nullptr;
    Profile* p = profile_.load(std::memory_order_relaxed);  // the owner's own store
    return p && p->epoch() == profiling_epoch() ? p : profile_made();
  }
  const Profile* profile_snapshot() const { return profile_.load(std::memory_order_acquire); }
  int64_t profile_now_us();
  // CLOCK_MONOTONIC in microseconds. Any thread.
  static int64_t monotonic_us();

 private:
  static inline thread_local Reactor* current_ = nullptr;
  int prepare_wait(int timeout_ms);
  void run_posted_calls();
  void dispatch(int fd, uint32_t generation, uint32_t events);
  // EPOLL_CTL_ADD (or MOD, for an fd in the set already) with the slot's current generation.
  int watch(int fd, const FdSlot& slot);
  // A flush left output on a kUnwatched fd (read_first_input): watches it, so the kernel's
  // EPOLLOUT brings the rest, and files its timer. False if the watch failed and closed it.
  bool watch_late(int fd, FdSlot& slot);
  // detach() for an fd attached here, but the owner stays set: the caller sets it next (a
  // move to another reactor of this thread: attach(), or detach() itself).
  void leave(int fd, FdSlot& slot, bool closing);
  void call_on_data(int fd, FdSlot& slot);
  // A lingering fd's input event: reads and drops what came, a bounded amount per visit;
  // closes fd at the peer's EOF (SOCK_CLOSE_LOCAL) or a read error (SOCK_CLOSE_ERROR).
  void discard_lingering_input(int fd, FdSlot& slot);
  void on_writable(int fd, FdSlot& slot);
  void run_on_data_again_list();
  void run_flush_list();
  // Marks slot kSentDirect and lists it for end_sent_direct(); without memory for the list
  // entry, leaves it unmarked (its next write goes direct too).
  void list_sent_direct(FdSlot& slot);
  // Clears kSentDirect on the fds listed by note_direct_write: the iteration's end.
  void end_sent_direct();
  void begin_stop();
  // on_shutdown, then a graceful close (sock_ fds: once the queue drains) or an immediate one
  // (plain fds), for each fd attached here. `late`: after an attach during the stop
  // (attached_while_stopping_), at the end of that iteration: all but the sock_ fds already
  // closing, which begin_stop (or the user) dealt with.
  void shut_down_attached(bool late);
  bool finish_stop_if_done();
  // One iteration's work took `us` (LoopCounters).
  void note_busy(int64_t us) {
    const auto v = static_cast<uint64_t>(us);  // CLOCK_MONOTONIC never goes back
    loop_counters_.busy_us.observe(v);
    if (v > loop_counters_.longest_busy_us.get()) loop_counters_.longest_busy_us.set(v);
  }
  // `now_us`: CLOCK_MONOTONIC in microseconds, read by the caller; the reactor's clock is
  // derived from it unless a test replaced that clock (set_clock).
  void tick_clock(int64_t now_us);
  void expire_timers();
  // fd's idle timeout ran out while its peer has bytes to take: whether the kernel saw the peer
  // take some since the last activity (a tick or more after it), and if so, moves the
  // activity to then. Only on the real clock: the kernel's ages are real milliseconds.
  bool peer_took_data(int fd, FdSlot& slot);
  // Whether the wheel entry (key, due_ms) still matters when it fires: its connection is open
  // here and no sooner entry superseded it (then its slot, else nullptr).
  FdSlot* timer_entry_live(uint64_t key, int64_t due_ms) const;
  // Whether compaction may drop the entry: its connection is gone or not attached here, or a
  // sooner entry superseded this one.
  bool timer_entry_dead(uint64_t key, int64_t due_ms) const;
  bool wheel_bloated() const;
  // Memory to give back: a bloated wheel, or pool chunks freed since the last trim().
  bool trim_pending() const;
  // trim_pending(), and the last trim() was kTrimIntervalMs ago or more.
  bool trim_due() const;
  // Drops the dead wheel entries (when the wheel is bloated) and gives the memory freed since
  // (the wheel's, the pool's chunks, this thread's malloc arena's) back to the kernel. Run
  // from an iteration that started with no work left over (the loop keeps up), at most once
  // per kTrimIntervalMs: what a burst took is back about a second after it ends. A loop that
  // never catches up does not trim; its dead entries still leave as they fall due.
  void trim();
  // Ends fd's pause once its queue is at the low watermark: true if it ended (on_ready owed).
  bool resume_if_drained(int fd, FdSlot& slot);
  // flush_fd() without its on_ready: sets *ready when one is owed (a pause ended, or a queue
  // the kernel had refused drained) and the fd stays open, and closes the fd when due.
  // Inlined into flush_fd, which runs for every connection at every flush step: as a call of
  // its own it cost a short connection about 25 instructions (bench/callgrind.sh, close16).
  [[gnu::always_inline]] inline long send_and_settle(int fd, FdSlot& slot, std::size_t budget,
                                                     bool* ready);
  static int64_t monotonic_ms(void* unused);
  // The origin of every reactor's ticks on monotonic_ms: the first reading in this process.
  // One origin, so a connection's ticks mean the same on any such reactor (resume_timers).
  static int64_t shared_epoch_ms();
  int64_t read_clock() const { return clock_(clock_context_); }
  Profile* profile_made();
  void refresh_top_connections();

  // The door line: set before the owner starts (init(), use_inbox(), set_on_open()) and then
  // only read, by posters (wake(), inbox(), is_owner_thread() through pool_) and the
  // acceptor as much as by the owner. Alone on the first cache line, so that the owner's
  // stores to the fields below never take it away from them (the static_assert in
  // reactor.cc checks that the owner's fields start on the next line).
  alignas(alloc::kCacheLineBytes) struct ::Reactor* api_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wake() writes it to end a blocking wait
  // Made by the first thread that posts (inbox()); compare-and-swap with release publishes
  // the whole object, and the owner's acquire load sees it complete. Written once.
  std::atomic<Inbox*> inbox_{nullptr};
  std::unique_ptr<alloc::BlockPool> pool_;
  OpenHook on_open_ = nullptr;
  bool owns_inbox_ = true;  // made by inbox(), not given to use_inbox()

  // From here on the owner's fields (the counters, which other threads read as relaxed
  // snapshots for metrics, included).
  alignas(alloc::kCacheLineBytes) int64_t stop_drain_ms_;
  // Connections attached (attach()) and detached, both on the owner thread (a move between
  // reactors happens only between two that one thread drives: attach()): plain stores.
  alloc::OwnerCounter attached_;
  WriteCounters write_counters_;
  // Made by the owner on first need, deleted with the reactor; release/acquire publishes the
  // whole object to readers on other threads.
  std::atomic<Profile*> profile_{nullptr};
  int64_t profile_now_us_ = 0;
  bool profile_clock_stale_ = true;
  int64_t top_refreshed_ms_ = 0;  // on the reactor's clock (now_ms_)
  int64_t trimmed_ms_ = 0;        // the last trim(), on the reactor's clock
  alloc::OwnerCounter trims_;
  uint64_t chunks_freed_at_trim_ = 0;
  uint64_t handed_over_taken_ = 0;
  bool keep_after_stop_ = false;
  // Work lists of fd_key(fd, generation) entries, so a closed-and-reused fd is skipped.
  std::vector<uint64_t> on_data_again_;
  std::vector<uint64_t> flush_;
  std::vector<uint64_t> scratch_;  // the list being run, swapped with one of the two above
  // note_direct_write's slots, whose kSentDirect the iteration's end clears. Slots, not keys:
  // a slot closed meanwhile and opened again here only loses the mark early (harmless), and
  // one another thread owns now is skipped (its owner, read atomically, is not this).
  std::vector<FdSlot*> sent_direct_;
  int serving_fd_ = -1;  // the fd whose on_data call is running (-1: none)
  ReactorLimits limits_;
  uint32_t idle_ticks_ = 0;  // limits_.idle_timeout_ms in ticks: every fd without kOwnIdle
  std::atomic<uint64_t> queued_total_{0};
  ClockFn clock_ = &Reactor::monotonic_ms;
  void* clock_context_ = nullptr;
  int64_t epoch_ms_ = 0;  // the clock's origin: tick 1 starts here (shared_epoch_ms())
  int64_t now_ms_ = 0;
  uint32_t now_tick_ = 1;
  TimerWheel wheel_{0};
  std::atomic<bool> stop_requested_{false};
  // request_stop() calls between their flag store and the end of their wake(): the owner may
  // see the flag before that write, and must not close wake_fd_ (whose number another thread
  // may then get) under it. Incremented before the store, decremented with release after the
  // write; the stop completes only once it reads 0 with acquire.
  std::atomic<int> stop_wakers_{0};
  bool stopping_ = false;
  // An fd was attached (or re-armed) after begin_stop() listed the attached ones (a
  // connection handed over through the inbox, a reactor_add or sock_open in a callback):
  // run_once() shuts it down at the end of that iteration.
  bool attached_while_stopping_ = false;
  int64_t stop_deadline_ms_ = 0;
  // Last: its buckets (432 bytes) are written once an iteration, read only by metrics, and
  // would only push the fields above apart.
  LoopCounters loop_counters_;
};

}  // namespace engine

#endif  // ENGINE_REACTOR_H_
