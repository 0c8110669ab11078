#include "engine/reactor.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <ctime>
#include <new>
#include <type_traits>

#include "alloc/jemalloc_arena.h"
#include "engine/defaults.h"
#include "engine/handle.h"
#include "engine/inbox.h"
#include "engine/libsock.h"
#include "engine/routing.h"
#include "engine/socket_ops.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

// Edge-triggered: one wakeup per state change, so work left over (a partial read, a queue cut
// short by the budget) goes on a work list instead of waiting for an edge that will not come.
// EPOLLPRI: TCP urgent data, at whose mark a recv() stops short (read_path.cc, note_bytes).
constexpr uint32_t kEpollEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;
// Bytes one fd may write per flush step before the others get their turn.
constexpr std::size_t kFlushBudget = 64 * kRecordPayload;
// While stopping, the wait is short so the drain deadline is noticed.
constexpr int kStopPollMs = 20;
// Dead wheel entries (closed connections' timers, which the wheel keeps until they are due:
// the idle timeout, 30 s by default) beyond which the reactor compacts the wheel and
// returns memory to the kernel: an allowance per live connection plus a floor. Without it a
// burst of short connections leaves its entries' memory resident for good (bench/RESULTS.md,
// "Memory after churn").
constexpr std::size_t kWheelSlack = 4096;
// A trim (compaction, purges) runs at most this often, and a reactor with memory to give back
// sleeps no longer than this: what a burst took is back within about a second of its end,
// and sustained churn pays for one purge a second, not one per few thousand closes.
constexpr int kTrimIntervalMs = 1000;

// The generation is checked first, with acquire: when the number moved to another reactor,
// the slot's other fields belong to that reactor's thread and must not be read here.
bool is_current(const FdSlot& slot, uint32_t generation, const Reactor* r) {
  return slot.generation.load(std::memory_order_acquire) == generation && slot.owner == r &&
         (slot.flags & kAttached);
}

}  // namespace

Reactor* Reactor::of(struct ::Reactor* api, bool create) {
  if (!api) {
    errno = EINVAL;
    return nullptr;
  }
  if (api->_impl || !create) return static_cast<Reactor*>(api->_impl);
  Reactor* r;
  try {
    r = new Reactor(api);
  } catch (const std::bad_alloc&) {  // reached from the C API: no exception may leave
    errno = ENOMEM;
    return nullptr;
  }
  if (r->init() < 0) {
    const int err = errno;
    delete r;
    errno = err;
    return nullptr;
  }
  api->_impl = r;
  return r;
}

Reactor::Reactor(struct ::Reactor* api) : api_(api), stop_drain_ms_(kStopDrainMs) {
  // The door line (reactor.h) fits one cache line, and the owner's fields start on the next.
  // Checked by gcc only: clang with libstdc++ counts Reactor as not standard-layout (the
  // [[no_unique_address]] inside std::unique_ptr), so offsetof is not allowed there; the
  // layout is the same Itanium ABI layout under both compilers.
#if !defined(__clang__)
  static_assert(std::is_standard_layout_v<Reactor>, "offsetof below needs standard layout");
  static_assert(offsetof(Reactor, api_) == 0 &&
                    offsetof(Reactor, stop_drain_ms_) == alloc::kCacheLineBytes,
                "a field the owner writes shares the door line");
#endif
}

Reactor::~Reactor() {
  Inbox* inbox = inbox_.load(std::memory_order_acquire);
  if (inbox && owns_inbox_) {
    while (inbox->drain_with(discard_posted) > 0) {}
    delete inbox;
  }
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  delete profile_.load(std::memory_order_relaxed);
}

void Reactor::use_inbox(Inbox* inbox) {
  owns_inbox_ = false;
  inbox_.store(inbox, std::memory_order_release);
}

Inbox* Reactor::inbox(bool* made) {
  Inbox* current = inbox_.load(std::memory_order_acquire);
  if (current) return current;
  Inbox* fresh;
  try {
    fresh = new Inbox(*this);
  } catch (const std::bad_alloc&) {  // the node preallocation, or the object itself
    errno = ENOMEM;
    return nullptr;
  }
  // Release: the owner and the other producers see the inbox whole. A loser of the race
  // throws its own away and uses the winner's.
  if (inbox_.compare_exchange_strong(current, fresh, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
    *made = true;
    return fresh;
  }
  delete fresh;
  return current;
}

int Reactor::init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return -1;
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return -1;
  epoll_event ev{};
  // Edge-triggered and never read: an eventfd wakes its waiters on every write, so each wake()
  // raises an event whatever the count, and the count (one per wakeup) cannot come near its
  // 2^64 - 2 limit. That saves a read(2) per wakeup.
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = fd_key(wake_fd_, 0);
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) < 0) return -1;
  pool_ = alloc::BlockPool::create<sizeof(Packet)>(alloc::Sharing::kOwnerThread);
  if (!pool_) return -1;
  limits_ = ReactorLimits{0, kHighWatermark, kLowWatermark, 0};
  epoch_ms_ = shared_epoch_ms();
  tick_clock(monotonic_us());
  wheel_ = TimerWheel(now_ms_);
  api_->last_tick = time(nullptr);
  return 0;
}

void Reactor::set_limits(const ReactorLimits& limits) {
  limits_ = limits;
  idle_ticks_ = ticks_of(limits_.idle_timeout_ms);
  if (!limits_.high_watermark) limits_.high_watermark = kHighWatermark;
  if (!limits_.low_watermark) limits_.low_watermark = limits_.high_watermark / 4;
  // Whole packets; a budget below one packet's size is one packet (none would be "no bound").
  const std::size_t packets = limits_.memory_budget / sizeof(Packet);
  pool_->set_limit(limits_.memory_budget && !packets ? 1 : packets);
}

int64_t Reactor::monotonic_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000 + ts.tv_nsec / 1000;
}

int64_t Reactor::monotonic_ms(void*) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

int64_t Reactor::shared_epoch_ms() {
  static const int64_t epoch = monotonic_ms(nullptr);  // a guarded one-time initialisation
  return epoch;
}

void Reactor::set_clock(ClockFn clock, void* context) {
  clock_ = clock;
  clock_context_ = context;
  epoch_ms_ = now_ms_ = read_clock();
  now_tick_ = 1;
  wheel_ = TimerWheel(now_ms_);
}

uint32_t Reactor::ticks_of(uint64_t ms) {
  const uint64_t tick = static_cast<uint64_t>(TimerWheel::kTickMs);
  return static_cast<uint32_t>((ms + tick - 1) / tick);
}

void Reactor::tick_clock(int64_t now_us) {
  // monotonic_ms's value exactly (both round down), without reading the clock again.
  now_ms_ = clock_ == &Reactor::monotonic_ms ? now_us / 1000 : read_clock();
  // Tick k covers [epoch + (k-1) * kTickMs, epoch + k * kTickMs); tick 0 means "none". An
  // expiry X has passed once now_tick_ >= X, and activity is stamped one tick ahead
  // (stamp_activity), so with durations rounded up a timeout never fires early.
  now_tick_ = 1 + static_cast<uint32_t>((now_ms_ - epoch_ms_) / TimerWheel::kTickMs);
}

void Reactor::bind_owner_thread() { pool_->bind_owner_thread(); }

Profile* Reactor::profile_made() {
  Profile* p = profile_.load(std::memory_order_relaxed);
  if (!p) {
    p = new (std::nothrow) Profile(profiling_epoch());
    profile_.store(p, std::memory_order_release);
  } else if (p->epoch() != profiling_epoch()) {
    p->restart(profiling_epoch());
  }
  return p;
}

int64_t Reactor::profile_now_us() {
  // Outside this reactor's loop (the owner's own code between two run_once calls, which may
  // be far apart) the cache says when the loop last ran, not now.
  if (profile_clock_stale_ || current_ != this) {
    profile_now_us_ = monotonic_us();
    profile_clock_stale_ = false;
  }
  return profile_now_us_;
}

void Reactor::refresh_top_connections() {
  top_refreshed_ms_ = now_ms_;
  if (Profile* p = profile_made()) p->refresh_top(this, monotonic_us() / 1000);
}

// The loop, in the order that keeps every promise:
//  1. A requested stop begins before waiting, so it runs even when the loop is busy.
//  2. Wait for events, not at all when fds are owed work or calls were posted meanwhile;
//     then run the calls other threads posted (they may queue output or close fds).
//  3. Dispatch each event whose (fd, generation) is still current; output first, so a
//     completed connect reports on_ready before its first on_data.
//  4. Give callbacks that read without draining another turn, then flush everything the
//     callbacks queued: all the responses owed by one batch leave in one writev per fd.
//  5. Close connections whose idle timeout or deadline passed (after the flush, so progress
//     made in this iteration counts).
//  6. During a stop, fds attached in this iteration are shut down as the first step did with
//     the others; the stop completes once every fd is closed or the drain deadline passed.
int Reactor::run_once(int timeout_ms) {
  if (!pool_->is_owner_thread()) bind_owner_thread();
  Reactor* const outer = current_;
  current_ = this;
  profile_clock_stale_ = true;  // the cache is the last iteration's (begin_stop's on_shutdown)
  pool_->drain_remote();
  // After current_ is set: on_shutdown is a callback like the others, whose sock_ calls
  // (a farewell write, sock_pending) must run inline, not be posted to this reactor's inbox.
  if (stop_requested_.load(std::memory_order_acquire) && !stopping_) begin_stop();

  epoll_event events[REACTOR_MAX_EVENTS];
  const int wait_ms = prepare_wait(timeout_ms);
  int n = epoll_wait(epoll_fd_, events, REACTOR_MAX_EVENTS, wait_ms);
  if (n < 0 && errno != EINTR) {
    current_ = outer;
    return -1;
  }
  n = n < 0 ? 0 : n;
  // The iteration's work starts here; one clock read serves the timers, the profiler's
  // callbacks and the loop's busy time.
  const int64_t began_us = monotonic_us();
  // Stored only when the second changes: the api struct's line is read by other threads
  // (its _impl by the acceptor, per batch), and a store per iteration would take it from them.
  if (const time_t now = time(nullptr); api_->last_tick != now) api_->last_tick = now;
  tick_clock(began_us);
  profile_now_us_ = began_us;
  profile_clock_stale_ = false;
  if (profiling_on() && now_ms_ - top_refreshed_ms_ >= kTopRefreshMs) refresh_top_connections();
  run_posted_calls();

  for (int i = 0; i < n; ++i) {
    const uint64_t key = events[i].data.u64;
    if (key_fd(key) == wake_fd_) continue;  // a wakeup: its work is the posted calls above
    dispatch(key_fd(key), key_generation(key), events[i].events);
  }
  run_on_data_again_list();
  profile_clock_stale_ = true;  // packets' lifetimes end in the flush
  run_flush_list();
  expire_timers();
  end_sent_direct();
  if (wait_ms != 0 && trim_due()) trim();  // the loop keeps up: no work was left over
  if (attached_while_stopping_) shut_down_attached(true);  // a callback's, like begin_stop's
  note_busy(monotonic_us() - began_us);

  current_ = outer;
  if (stopping_ && finish_stop_if_done()) return -1;  // `this` was deleted
  return n;
}

int Reactor::prepare_wait(int timeout_ms) {
  // A stop with nothing left attached completes at the end of this iteration: don't wait
  // kStopPollMs for it (that wait was most of an idle server's stop time).
  if (!on_data_again_.empty() || !flush_.empty() || (stopping_ && !attached())) return 0;
  if (stopping_ || stop_requested_.load(std::memory_order_relaxed)) {
    timeout_ms = (timeout_ms >= 0 && timeout_ms < kStopPollMs) ? timeout_ms : kStopPollMs;
  }
  const int64_t timer = wheel_.next_timeout_ms(now_ms_);
  if (timer >= 0 && (timeout_ms < 0 || timer < timeout_ms)) timeout_ms = static_cast<int>(timer);
  // While profiling, the top-connections list is refreshed by the loop: wake for it.
  if (profiling_on() && (timeout_ms < 0 || timeout_ms > kTopRefreshMs)) timeout_ms = kTopRefreshMs;
  // Memory to give back: wake for the trim (run_once) rather than sleep on it.
  if (trim_pending() && (timeout_ms < 0 || timeout_ms > kTrimIntervalMs)) timeout_ms = kTrimIntervalMs;
  // Last, and only for a wait that may block: once may_sleep() returned true, a post wakes
  // us, so nothing may turn the wait into a non-blocking one after it.
  if (timeout_ms != 0) {
    Inbox* inbox = inbox_.load(std::memory_order_acquire);
    if (inbox && !inbox->may_sleep()) return 0;
  }
  return timeout_ms;
}

void Reactor::run_posted_calls() {
  if (Inbox* inbox = inbox_.load(std::memory_order_acquire)) {
    inbox->drain_with([this](const RemoteCall& call) { run_posted(*this, call); });
  }
}

void Reactor::dispatch(int fd, uint32_t generation, uint32_t events) {
  FdSlot* slot = fd_slot(fd);
  // A stale event: the fd was closed (and perhaps its number reused) after the kernel
  // queued it, possibly by a callback earlier in this same batch.
  if (!slot || !is_current(*slot, generation, this)) return;
  if (events & (EPOLLERR | EPOLLHUP)) slot->flags |= kHangup;
  // The error itself stays pending for the read or write that reports it (SO_ERROR would
  // consume it); the flag only names the close reason.
  if (events & EPOLLERR) slot->flags |= kErrorSeen;
  if (events & EPOLLRDHUP) slot->flags |= kPeerShut;
  if (events & EPOLLPRI) slot->flags |= kUrgentSeen;
  // Noted before the flush below: a close it completes must know that input waits (a lingering
  // close, linger.cc), and input often comes in one event with the ACKs that drain the queue.
  const bool readable = events & (EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP);
  if (readable) slot->flags |= kReadPending;
  // Every EPOLLIN edge reports EPOLLOUT too while the socket is writable: only an fd with
  // something to do on it (queued output, a refused write, a connect, a plain fd's user)
  // needs the visit.
  if ((events & (EPOLLOUT | EPOLLERR)) &&
      (slot->head || (slot->flags & (kWriteBlocked | kConnecting)) || !(slot->flags & kOpen))) {
    on_writable(fd, *slot);
    if (!is_current(*slot, generation, this)) return;
  }
  if (readable) call_on_data(fd, *slot);
}

void Reactor::on_writable(int fd, FdSlot& slot) {
  const uint32_t generation = slot.generation.load(std::memory_order_relaxed);
  if (slot.flags & kConnecting) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
      set_slot_error(slot, err);
      close_now(fd, slot, CloseReason::kError);
      return;
    }
    slot.flags &= ~kConnecting;
    // Closed (sock_close) while connecting: the flush step passed it over until now, and with
    // nothing queued no write lists it again; it closes once its queue is sent, unannounced.
    if (slot.flags & kClosing) {
      want_flush(fd, slot);
      return;
    }
    if (api_->on_ready) api_->on_ready(api_, fd);
    if (!is_current(slot, generation, this)) return;
    if (slot.head) want_flush(fd, slot);
    return;
  }
  if (!(slot.flags & kOpen)) {  // a plain fd: every writable edge is news to its user
    if (api_->on_ready) api_->on_ready(api_, fd);
    return;
  }
  if (slot.head || (slot.flags & kWriteBlocked)) flush_fd(fd, slot, kFlushBudget, true);
}

void Reactor::call_on_data(int fd, FdSlot& slot) {
  const uint32_t generation = slot.generation.load(std::memory_order_relaxed);
  // A new callback: its progress counts afresh, and its first reply may go straight to the
  // kernel again (the direct first write, write_path.cc).
  slot.flags &= ~(kReadProgress | kSentDirect);
  // Above the high watermark the application is not asked to read (libreact.h): new input
  // waits in the kernel, kReadPending remembers it, and resume_if_drained() lists the fd again.
  if (api_->on_data && !(slot.flags & kPaused)) {
    // Nested only by an accept that reads its first input inside the listener's on_data
    // (read_first_input): the listener then reads as not served, which only lists its writes.
    serving_fd_ = fd;
    api_->on_data(api_, fd);
    serving_fd_ = -1;
    if (!is_current(slot, generation, this)) return;  // closed or detached inside
  } else if (slot.extra && slot.extra->linger == SlotExtra::Linger::kLingering) {
    discard_lingering_input(fd, slot);
    return;
  }
  if ((slot.flags & (kReadPending | kReadProgress)) == (kReadPending | kReadProgress)) {
    want_on_data_again(fd, slot);  // progress without EAGAIN: more input may wait behind it
    return;
  }
  // A hung-up fd whose input nobody consumes (or a plain fd, whose user reads on its own)
  // would never hear from epoll again: close it.
  if ((slot.flags & kHangup) && !(slot.flags & (kEof | kFailed | kClosing))) {
    close_now(fd, slot, (slot.flags & kErrorSeen) ? CloseReason::kError : CloseReason::kPeer);
  }
}

void Reactor::run_on_data_again_list() {
  scratch_.swap(on_data_again_);
  for (const uint64_t key : scratch_) {
    FdSlot* slot = fd_slot(key_fd(key));
    if (!slot || !is_current(*slot, key_generation(key), this)) continue;
    slot->flags &= ~kOnDataAgainList;
    call_on_data(key_fd(key), *slot);
  }
  scratch_.clear();
}

void Reactor::run_flush_list() {
  scratch_.swap(flush_);
  for (const uint64_t key : scratch_) {
    FdSlot* slot = fd_slot(key_fd(key));
    if (!slot || !is_current(*slot, key_generation(key), this)) continue;
    slot->flags &= ~(kOnFlushList | kSentDirect);  // the next write may go direct (write_path.cc)
    flush_fd(key_fd(key), *slot, kFlushBudget, true);
  }
  scratch_.clear();
}

void Reactor::list_sent_direct(FdSlot& slot) {
  try {
    sent_direct_.push_back(&slot);
  } catch (const std::bad_alloc&) {
    return;
  }
  slot.flags |= kSentDirect;
}

void Reactor::end_sent_direct() {
  // Only this thread gives a slot it owns to another owner (by closing it, or by moving it to
  // another reactor this thread drives: attach() refuses a move from another thread's), and
  // not during this loop: a slot whose owner reads as this stays ours while its flags are
  // written.
  for (FdSlot* slot : sent_direct_) {
    if (load_owner(*slot) == this) slot->flags &= ~kSentDirect;
  }
  sent_direct_.clear();
}

void Reactor::want_flush(int fd, FdSlot& slot) {
  assert_owner_thread();
  if (slot.flags & kOnFlushList) return;
  slot.flags |= kOnFlushList;
  flush_.push_back(fd_key(fd, slot.generation.load(std::memory_order_relaxed)));
}

void Reactor::want_on_data_again(int fd, FdSlot& slot) {
  if (slot.flags & kOnDataAgainList) return;
  slot.flags |= kOnDataAgainList;
  on_data_again_.push_back(fd_key(fd, slot.generation.load(std::memory_order_relaxed)));
}

long Reactor::send_and_settle(int fd, FdSlot& slot, std::size_t budget, bool* ready) {
  if (slot.flags & kFailed) {
    const int err = slot_error(slot);
    close_now(fd, slot, CloseReason::kError);
    errno = err;
    return -1;
  }
  if (slot.flags & kConnecting) return 0;
  std::size_t written = 0;
  const SendResult result = send_queue(fd, slot, budget, &written);
  if (result == SendResult::kDrained) {
    if (Profile* p = profile()) p->drained(fd, profile_now_us());
  }
  // on_ready is owed only where the fd stays open (every return below that leaves it so).
  bool resumed = false;
  if (written) {
    stamp_activity(slot);  // write progress keeps a long download alive
    if (result != SendResult::kError) resumed = resume_if_drained(fd, slot);
  }
  switch (result) {
    case SendResult::kError: {
      const int err = slot_error(slot);
      close_now(fd, slot, CloseReason::kError);
      errno = err;
      return -1;
    }
    case SendResult::kBlocked:
      slot.flags |= kWriteBlocked;
      if ((slot.flags & kUnwatched) && !watch_late(fd, slot)) return static_cast<long>(written);
      *ready = resumed;
      return static_cast<long>(written);
    case SendResult::kHeld:
      // The holding layer waits for input (a TLS handshake). After the peer's EOF none comes:
      // what is held can never be sent.
      if (slot.flags & kEof) {
        close_now(fd, slot, CloseReason::kPeer);
        return static_cast<long>(written);
      }
      if ((slot.flags & kUnwatched) && !watch_late(fd, slot)) return static_cast<long>(written);
      // Nor may a pause for the held bytes keep that input from it; no peer is slow to take
      // output that cannot be sent yet.
      if (slot.flags & kPaused) {
        slot.flags &= ~kPaused;
        slot.flags |= kWriteBlocked;  // the pause's promise stands: on_ready once drained
        if (slot.flags & kReadPending) want_on_data_again(fd, slot);
      }
      *ready = resumed;
      return static_cast<long>(written);
    case SendResult::kBudget:
      want_flush(fd, slot);
      *ready = resumed;
      return static_cast<long>(written);
    case SendResult::kDrained:
      break;
  }
  switch (close_if_due(fd, slot, api_)) {
    case Drained::kMoreQueued:  // a layer queued a final record: send it first
      want_flush(fd, slot);
      *ready = resumed;
      return static_cast<long>(written);
    case Drained::kClosed:
    case Drained::kLingering:
      return static_cast<long>(written);
    case Drained::kStaysOpen:
      break;
  }
  if (slot.flags & kWriteBlocked) {
    slot.flags &= ~kWriteBlocked;
    resumed = true;
  }
  *ready = resumed;
  return static_cast<long>(written);
}

long Reactor::flush_fd(int fd, FdSlot& slot, std::size_t budget, bool notify_ready) {
  bool ready = false;  // set only where the fd stays open
  const long written = send_and_settle(fd, slot, budget, &ready);
  // on_ready last and once, after the close check: what it writes is queued for a later flush
  // (a close it asks for waits for that), and nothing here touches the slot after it.
  if (ready && notify_ready && api_->on_ready && !(slot.flags & kPaused)) {
    api_->on_ready(api_, fd);
  } else if (ready && !notify_ready) {
    // sock_flush (or a posted flush) ran inside the application's code, where no callback
    // may: the flush step owes the on_ready (kWriteBlocked: "on_ready once drained").
    slot.flags |= kWriteBlocked;
    want_flush(fd, slot);
  }
  return written;
}

bool Reactor::watch_late(int fd, FdSlot& slot) {
  slot.flags &= ~kUnwatched;
  if (watch(fd, slot) < 0) {
    set_slot_error(slot, errno);
    close_now(fd, slot, CloseReason::kError);
    return false;
  }
  // Not closed here if already due: the wheel fires it at its next advance.
  arm_timer(fd, slot, false);
  return true;
}

int Reactor::watch(int fd, const FdSlot& slot) {
  epoll_event ev{};
  ev.events = kEpollEvents;
  ev.data.u64 = fd_key(fd, slot.generation.load(std::memory_order_relaxed));
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0) return 0;
  return errno == EEXIST ? epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) : -1;
}

// Inlined into detach(), which runs at every close (bench/callgrind.sh, close16).
[[gnu::always_inline]] inline void Reactor::leave(int fd, FdSlot& slot, bool closing) {
  if (!closing) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);  // ENOENT: closed behind our back
  slot.flags &= ~(kAttached | kOnFlushList | kOnDataAgainList | kListenerNoDelay | kUnwatched);
  attached_.sub(1);
  // A detach off the owner thread is a misuse (reactor_remove elsewhere; attach() refuses the
  // moves that would do it): its counter update races, and the profile is not written.
  if (Profile* p = is_owner_thread() ? profile() : nullptr) p->closed(fd);
  count_queued(-static_cast<int64_t>(slot.queued_bytes));
}

int Reactor::attach(int fd, FdSlot& slot, bool watch_it) {
  assert_owner_thread();
  if (api_->maxfd > 0 && fd >= api_->maxfd) {
    errno = EBADF;
    return -1;
  }
  // Checked before reading the flags, which the holding thread may be writing.
  if (held_by_other_thread(slot)) {
    errno = EEXIST;
    return -1;
  }
  // A move from another reactor of this thread leaves it with the owner still set: other
  // threads route by the owner (target_of), and an open fd without one would run their calls
  // inline. The owner changes once, below.
  Reactor* const moved_from =
      slot.owner && slot.owner != this && (slot.flags & kAttached) ? slot.owner : nullptr;
  if (moved_from) moved_from->leave(fd, slot, false);
  const bool mine = slot.owner == this && (slot.flags & kAttached);
  if (watch_it) {
    epoll_event ev{};
    ev.events = kEpollEvents;
    ev.data.u64 = fd_key(fd, slot.generation.load(std::memory_order_relaxed));
    // MOD re-arms with the current generation; ENOENT means the fd was closed behind our back
    // (the kernel dropped it from the set) and its number reused: add it afresh.
    if ((!mine || epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) < 0) && watch(fd, slot) < 0) {
      if (moved_from) set_owner(slot, nullptr);  // detached, as from reactor_remove
      return -1;
    }
  }
  // Any attach during a stop, a re-arm too: sock_open of a plain fd (or sock_clear) in a
  // callback gives an attached fd a new generation, which begin_stop's list does not know.
  if (stopping_) attached_while_stopping_ = true;
  if (!mine) {
    attached_.add(1);
    if (Profile* p = profile()) p->opened(fd, monotonic_us() / 1000);
    count_queued(static_cast<int64_t>(slot.queued_bytes));  // a queue may come along
  }
  set_owner(slot, this);
  // The fd may be a new listener behind an old number: accept.h asks it about TCP_NODELAY again.
  slot.flags = (slot.flags & ~(kListenerNoDelay | kUnwatched)) | kAttached;
  return 0;
}

void Reactor::read_first_input(int fd, FdSlot& slot) {
  const uint32_t generation = slot.generation.load(std::memory_order_relaxed);
  // kUnwatched until watched below: a flush that leaves output queued meanwhile (the callback's
  // sock_flush) watches it itself (send_and_settle).
  slot.flags |= kReadPending | kUnwatched;
  call_on_data(fd, slot);
  // Closed, detached (reactor_add files its timers again: resume_timers()) or moved to another
  // reactor on this thread (which armed its own) in its first callback: nothing to do.
  if (!is_current(slot, generation, this)) return;
  // Due to close with nothing left to send and no layer to queue a last record: the next
  // flush step (it is listed) closes it (sock_close, the peer's EOF, a failure), and nothing
  // waits for an event or a timer before that. It stays kUnwatched: after the peer's EOF it
  // still takes writes, and should one (another fd's callback, a posted write) leave output
  // the kernel refuses, that flush watches it and arms its timer (send_and_settle).
  const bool closes_at_flush = (slot.flags & kOnFlushList) &&
                               (slot.flags & (kClosing | kEof | kFailed)) && !slot.head &&
                               !slot_tlc(slot);
  if (closes_at_flush) return;
  slot.flags &= ~kUnwatched;
  if (watch(fd, slot) < 0) {
    set_slot_error(slot, errno);
    close_now(fd, slot, CloseReason::kError);
    return;
  }
  // The idle timeout counts from the open (start_timers); a timer the callback set that
  // fires sooner stays, and this one is checked when it fires.
  arm_timer(fd, slot);
}

int Reactor::detach(int fd, FdSlot& slot, bool closing) {
  if (slot.owner != this || !(slot.flags & kAttached)) {
    errno = EBADF;
    return -1;
  }
  leave(fd, slot, closing);
  set_owner(slot, nullptr);
  return 0;
}

void Reactor::begin_stop() {
  stopping_ = true;
  stop_deadline_ms_ = read_clock() + stop_drain_ms_;
  shut_down_attached(false);
}

void Reactor::shut_down_attached(bool late) {
  attached_while_stopping_ = false;  // before the callbacks, which may attach more
  std::vector<uint64_t> keys;
  // Other reactors' slots are only looked at through the atomic owner (their other fields
  // belong to other threads). Listed first: the callbacks may close and open fds. After
  // begin_stop(), every plain fd it saw is closed and every sock_ fd is closing, so what is
  // attached and not closing arrived later.
  fd_table_for_each([&](int fd, FdSlot& slot) {
    if (load_owner(slot) == this && (slot.flags & kAttached) &&
        !(late && (slot.flags & kOpen) && (slot.flags & kClosing))) {
      keys.push_back(fd_key(fd, slot.generation.load(std::memory_order_relaxed)));
    }
  });
  for (const uint64_t key : keys) {
    FdSlot* slot = fd_slot(key_fd(key));
    if (!is_current(*slot, key_generation(key), this)) continue;
    if (api_->on_shutdown) api_->on_shutdown(api_, key_fd(key));
    if (!is_current(*slot, key_generation(key), this)) continue;
    if (slot->flags & kOpen) {
      slot->flags |= kClosing;  // sock_ fds close once their queue drains
      want_flush(key_fd(key), *slot);
    } else {
      close_now(key_fd(key), *slot, CloseReason::kLocal);
    }
  }
}

bool Reactor::finish_stop_if_done() {
  if (attached() && read_clock() < stop_deadline_ms_) return false;
  // A requester still writing wake_fd_: its write ends in microseconds, so look again.
  if (stop_wakers_.load(std::memory_order_acquire) != 0) return false;
  fd_table_for_each([&](int fd, FdSlot& slot) {
    if (load_owner(slot) == this && (slot.flags & kAttached)) {
      close_now(fd, slot, CloseReason::kLocal);
    }
  });
  errno = 0;
  if (keep_after_stop_) return true;  // its owner deletes it (a shard, after joining)
  api_->_impl = nullptr;
  delete this;
  // Again: the teardown may set errno (a pool's leak report failing on stderr), and "-1 with
  // errno 0" is how the caller's loop tells the stop from a failure (libreact.h); taken for a
  // failure, the next review would make a new reactor that nothing stops.
  errno = 0;
  return true;
}

void Reactor::request_stop() {
  stop_wakers_.fetch_add(1, std::memory_order_relaxed);  // ordered before the store by it
  stop_requested_.store(true, std::memory_order_release);
  wake();
  stop_wakers_.fetch_sub(1, std::memory_order_release);
}

void Reactor::wake() {
  const uint64_t one = 1;
  // write(2) on an eventfd is async-signal-safe, and cannot fail here: the count is never read
  // back (init()), and a wakeup per nanosecond would take 584 years to fill it.
  [[maybe_unused]] const ssize_t r = write(wake_fd_, &one, sizeof one);
}

void Reactor::check_high_watermark(FdSlot& slot) {
  const std::size_t own = slot.extra ? slot.extra->high_watermark : 0;
  const std::size_t high = own ? own : limits_.high_watermark;
  if (slot.queued_bytes > high) slot.flags |= kPaused;
}

bool Reactor::resume_if_drained(int fd, FdSlot& slot) {
  if (!(slot.flags & kPaused)) return false;
  // A connection's own pair holds both marks (sock_set_watermarks): its low of 0 means "once
  // empty", never the reactor's low, which may lie above its own high.
  const bool own = slot.extra && slot.extra->high_watermark;
  const std::size_t low = own ? slot.extra->low_watermark : limits_.low_watermark;
  if (slot.queued_bytes > low) return false;
  slot.flags &= ~kPaused;
  if (slot.flags & kReadPending) want_on_data_again(fd, slot);  // input waited behind the pause
  return true;
}

void Reactor::start_timers(int fd, FdSlot& slot, bool arm) {
  assert_owner_thread();
  // A new connection, or one sock_attach() gives this reactor: its own timeout and deadline
  // (a moved one's) stay behind, and this reactor's idle timeout applies from now.
  // (reactor_add keeps them: resume_timers().)
  slot.flags &= ~kOwnIdle;
  if (slot.extra) {
    slot.extra->deadline_tick = 0;
    slot_extra_trim(slot);
  }
  stamp_activity(slot);
  slot.timer_due_tick = 0;
  if (arm) arm_timer(fd, slot);
}

void Reactor::resume_timers(int fd, FdSlot& slot) {
  // Its entry may have fired while no reactor held the fd, and been dropped: file a new one.
  // Its reads and writes meanwhile were stamped by nobody: idle from now.
  slot.timer_due_tick = 0;
  stamp_activity(slot);
  arm_timer(fd, slot, false);
}

void Reactor::arm_timer(int fd, FdSlot& slot, bool close_if_due) {
  assert_owner_thread();
  const uint32_t deadline = slot_deadline(slot);
  uint32_t expiry = deadline ? deadline : UINT32_MAX;
  const uint32_t idle = (slot.flags & kOwnIdle) ? slot.extra->idle_ticks : idle_ticks_;
  if (idle && slot.activity_tick + idle < expiry) expiry = slot.activity_tick + idle;
  if (expiry == UINT32_MAX) return;
  if (expiry <= now_tick_ && close_if_due) {
    // Idle, by the engine's count of reads and writes; but a reader that keeps reading a
    // large response makes no write progress while the kernel's send buffer (megabytes)
    // drains into it. The deadline, though, nothing extends.
    if (expiry != deadline && peer_took_data(fd, slot)) {
      arm_timer(fd, slot);  // the activity moved forward: this ends (peer_took_data)
      return;
    }
    if (slot.extra && slot.extra->linger == SlotExtra::Linger::kLingering) {  // done waiting
      close_now(fd, slot, CloseReason::kLocal);
      return;
    }
    reset_on_close_if_owed(fd, slot.head != nullptr);
    close_now(fd, slot, CloseReason::kTimeout);
    return;
  }
  // An entry that fires sooner re-checks then; a later one is superseded by this one. An
  // expiry already past is filed as due: the wheel fires it at its next advance.
  if (slot.timer_due_tick && slot.timer_due_tick <= expiry) return;
  slot.timer_due_tick = expiry;
  wheel_.schedule(fd_key(fd, slot.generation.load(std::memory_order_relaxed)),
                  epoch_ms_ + int64_t{expiry - 1} * TimerWheel::kTickMs);
}

FdSlot* Reactor::timer_entry_live(uint64_t key, int64_t due_ms) const {
  FdSlot* slot = fd_slot(key_fd(key));
  if (!slot || !is_current(*slot, key_generation(key), this)) return nullptr;
  const auto due_tick = 1 + static_cast<uint32_t>((due_ms - epoch_ms_) / TimerWheel::kTickMs);
  if (slot->timer_due_tick != due_tick) return nullptr;  // superseded by an earlier entry
  return slot;
}

bool Reactor::peer_took_data(int fd, FdSlot& slot) {
  if (clock_ != &Reactor::monotonic_ms) return false;
  const int age_ms = peer_progress_age_ms(fd, slot.head != nullptr);
  if (age_ms < 0) return false;
  // activity_tick is the end of the tick the last activity fell in (stamp_activity).
  const int64_t since_activity_ms =
      int64_t{now_tick_ + 1 - slot.activity_tick} * TimerWheel::kTickMs;
  if (age_ms + TimerWheel::kTickMs >= since_activity_ms) return false;
  // Hence the new activity_tick is two ticks or more past the old one, and at most now + 1:
  // arm_timer() comes back here only for newer progress, or closes.
  slot.activity_tick = now_tick_ + 1 - static_cast<uint32_t>(age_ms / TimerWheel::kTickMs);
  return true;
}

void Reactor::expire_timers() {
  wheel_.advance(now_ms_, [&](uint64_t key, int64_t due_ms) {
    FdSlot* slot = timer_entry_live(key, due_ms);
    if (!slot) return;
    slot->timer_due_tick = 0;
    arm_timer(key_fd(key), *slot);
  });
}

bool Reactor::wheel_bloated() const { return wheel_.size() > 2 * attached() + kWheelSlack; }

bool Reactor::trim_pending() const {
  return wheel_bloated() || pool_->counters_chunks_freed() != chunks_freed_at_trim_;
}

bool Reactor::trim_due() const {
  return now_ms_ - trimmed_ms_ >= kTrimIntervalMs && trim_pending();
}

bool Reactor::timer_entry_dead(uint64_t key, int64_t due_ms) const {
  FdSlot* slot = fd_slot(key_fd(key));
  // Acquire, as in is_current(): a slot that moved on belongs to another thread now.
  if (!slot || slot->generation.load(std::memory_order_acquire) != key_generation(key)) {
    return true;  // the connection is gone: this entry can never matter again
  }
  // Detached (reactor_remove) or moved: expire_timers() would drop it too, and reactor_add
  // files a new one (resume_timers()).
  if (load_owner(*slot) != this || !(slot->flags & kAttached)) return true;
  const auto due_tick = 1 + static_cast<uint32_t>((due_ms - epoch_ms_) / TimerWheel::kTickMs);
  return slot->timer_due_tick != due_tick;  // superseded by a sooner entry
}

void Reactor::trim() {
  trimmed_ms_ = now_ms_;
  trims_.add(1);
  if (wheel_bloated()) {
    wheel_.compact([this](uint64_t key, int64_t due_ms) { return !timer_entry_dead(key, due_ms); });
  }
  // What the wheel, the pool and the callbacks freed went back to jemalloc, which decays an
  // arena only while it is used (no background threads): return it to the kernel now.
  pool_->trim();
  alloc::release_thread_memory();
  chunks_freed_at_trim_ = pool_->counters_chunks_freed();
}

}  // namespace engine
