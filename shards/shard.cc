#include "shards/shard.h"

#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <mutex>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "alloc/jemalloc_arena.h"
#include "engine/accept.h"
#include "engine/defaults.h"
#include "engine/libsock.h"
#include "engine/routing.h"
#include "shards/accept_batch.h"
#include "shards/accept_pause.h"
#include "shards/start_thread.h"

namespace shards {
namespace {

// General-purpose arenas of shard threads that have finished, for the next shard threads to
// reuse: an arena cannot be destroyed while memory a shard allocated in it may still be live
// (freed later by another thread, or never), and creating one per thread start would use up
// jemalloc's 4,095 arenas in a process that starts and stops servers. Taken once per shard
// thread start and exit, never per request.
std::mutex g_spare_arenas_mutex;
std::vector<alloc::JemallocArena> g_spare_arenas;

std::optional<alloc::JemallocArena> take_arena() {
  {
    const std::lock_guard<std::mutex> lock(g_spare_arenas_mutex);
    if (!g_spare_arenas.empty()) {
      alloc::JemallocArena arena = std::move(g_spare_arenas.back());
      g_spare_arenas.pop_back();
      return arena;
    }
  }
  return alloc::JemallocArena::create();
}

void give_back_arena(alloc::JemallocArena arena) {
  const std::lock_guard<std::mutex> lock(g_spare_arenas_mutex);
  try {
    g_spare_arenas.push_back(std::move(arena));
  } catch (const std::bad_alloc&) {
    // Not reused, still never destroyed: one arena more the next shard creates.
  }
}

}  // namespace

Shard::Shard(const SockServerSettings& settings, int index, int listener, SockServer* server,
             uint64_t share, const LimitWaiter* waiter)
    : api_{},
      settings_(settings),
      index_(index),
      listener_(listener),
      server_(server),
      publishes_load_(listener < 0 &&
                      (settings.placement == SOCK_PLACE_LEAST_LOADED || waiter != nullptr)),
      share_(listener >= 0 ? share : 0),
      waiter_(waiter) {
  // The callbacks the user gave, except on_data, on_shutdown and on_close, which the shard
  // wraps: on_data to accept on its own listener, all three to keep the listener and the
  // accept-pause timer (attached to this reactor too) away from the user's callbacks.
  api_.on_ready = settings.on_ready;
  api_.on_data = &Shard::on_data;
  api_.on_shutdown = &Shard::on_shutdown;
  api_.on_close = &Shard::on_close;
}

bool Shard::init() {
  engine_ = engine::Reactor::of(&api_, true);
  if (!engine_) return false;
  ReactorLimits limits{};
  limits.idle_timeout_ms = settings_.idle_timeout_ms == SOCK_NO_TIMEOUT ? 0
                           : settings_.idle_timeout_ms ? settings_.idle_timeout_ms
                                                       : engine::kServerIdleTimeoutMs;
  limits.high_watermark = settings_.high_watermark;
  limits.low_watermark = settings_.low_watermark;
  limits.memory_budget = settings_.shard_memory_budget;
  engine_->set_limits(limits);
  engine_->set_stop_drain_ms(settings_.stop_timeout_ms ? settings_.stop_timeout_ms
                                                       : engine::kStopDrainMs);
  engine_->set_on_open(settings_.on_open);
  // Kept past its stop until ~Shard: while the other shards finish theirs, their threads may
  // still read this shard's counters (a /metrics scrape served during a stop).
  engine_->set_keep_after_stop();
  try {
    inbox_ = std::make_unique<engine::Inbox>(*engine_);
  } catch (const std::bad_alloc&) {  // the node preallocation, or the object itself
    errno = ENOMEM;
    return false;
  }
  engine_->use_inbox(inbox_.get());
  // The listener last: if anything fails, it is not attached (see the header).
  return listener_ < 0 || (accept_pause_.init(&api_) && reactor_add(&api_, listener_) == 0);
}

Shard* Shard::of(struct ::Reactor* api) { return reinterpret_cast<Shard*>(api); }

Shard::~Shard() {
  if (!engine_) return;  // init() could not make the reactor: nothing else was made
  if (!started_) {
    reactor_stop(&api_);
    // -1 once the stop completed (errno 0) or the loop failed: either way it is over.
    while (engine_->run_once(0) >= 0) {}
  }
  if (inbox_) {
    while (inbox_->drain_with(engine::discard_posted) > 0) {}
  }
  // Its thread is joined (or never ran): this thread may own the engine state now.
  engine_->bind_owner_thread();
  api_._impl = nullptr;
  delete engine_;
}

bool Shard::start() {
  std::latch owned(1);
  if (!start_thread(&thread_, [this, &owned] { run(owned); })) return false;
  owned.wait();
  started_ = true;
  return true;
}

void Shard::request_stop() { reactor_stop(&api_); }

void Shard::join() {
  if (thread_.joinable()) thread_.join();
}

void Shard::run(std::latch& owned) {
  if (settings_.pin_cpus) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(index_) % static_cast<unsigned>(sysconf(_SC_NPROCESSORS_ONLN)),
            &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  }
  // Everything this thread mallocs (connections' extras, callbacks' buffers, posted copies)
  // comes from an arena no other shard uses, so shards never wait on one another's arena
  // lock. Without one (jemalloc out of arenas or memory) the thread keeps the automatic arena
  // jemalloc gave it, which works, only without that guarantee. Under the sanitizers malloc
  // is theirs and the binding changes nothing.
  std::optional<alloc::JemallocArena> arena = take_arena();
  if (arena && !arena->bind_calling_thread()) {
    give_back_arena(std::move(*arena));
    arena.reset();
  }
  engine_->bind_owner_thread();
  owned.count_down();  // start() returns; `owned` is gone after this
  // run_once returns -1 with errno 0 once the stop completed (the engine state stays, for
  // ~Shard to delete).
  if (publishes_load_) {
    while (engine_->run_once(REACTOR_TICK) >= 0 || errno != 0) publish_load();
  } else if (share_) {
    while (engine_->run_once(REACTOR_TICK) >= 0 || errno != 0) release_below_share();
  } else {  // the loop every other shard runs, without a test per iteration
    while (engine_->run_once(REACTOR_TICK) >= 0 || errno != 0) {}
  }
  // The thread ends here: a thread made later may get its id, and must not pass for the owner
  // before ~Shard binds its own. What it allocated stays valid in the arena, which the next
  // shard thread may take up.
  engine_->release_owner_thread();
  if (arena) give_back_arena(std::move(*arena));
}

uint64_t Shard::connections() const {
  // The listener and the pause timer are attached too, but are not connections; a paused
  // listener is detached.
  const std::size_t own = listener_ < 0 ? 0 : accept_pause_.holds_listener() ? 1 : 2;
  const std::size_t attached = engine_->attached();
  return attached > own ? attached - own : 0;
}

void Shard::publish_load() {
  const uint64_t connections = this->connections();
  // Each load reads the shard's own stores back (no other thread writes the card); a store
  // only when the figure changed leaves the acceptor's copy of the line valid while the
  // shard's load holds still.
  const auto publish = [](std::atomic<uint64_t>& field, uint64_t value, std::memory_order order) {
    if (field.load(std::memory_order_relaxed) != value) field.store(value, order);
  };
  publish(load_card_.connections, connections, std::memory_order_relaxed);
  publish(load_card_.queued_bytes, engine_->queued_total(), std::memory_order_relaxed);
  // Last, with release, paired with load()'s acquire: a reader that sees connections taken
  // sees them counted in `connections` too, so a batch never drops out of both figures (an
  // older `taken` beside a newer count only overstates the load, for one batch).
  const uint64_t taken = engine_->handed_over_taken();
  publish(load_card_.taken, taken, std::memory_order_release);
  if (waiter_) {
    // With what the acceptor handed fixed (it waits), its count for this shard falls exactly
    // when `held` does: a close, or a handed fd that failed to open.
    const uint64_t held = connections - taken;
    const uint64_t before = load_card_.held.load(std::memory_order_relaxed);
    if (held != before) {
      load_card_.held.store(held, std::memory_order_seq_cst);
      if (static_cast<int64_t>(held - before) < 0) waiter_->closed_some();
    }
  }
}

void Shard::release_below_share() {
  if (accept_pause_.held() && connections() < share_) accept_pause_.release(&api_);
}

Shard::Load Shard::load() const {
  // `taken` first, with acquire: see publish_load().
  const uint64_t taken = load_card_.taken.load(std::memory_order_acquire);
  return Load{.connections = load_card_.connections.load(std::memory_order_relaxed),
              .taken = taken,
              .queued_bytes = load_card_.queued_bytes.load(std::memory_order_relaxed)};
}

void Shard::on_data(struct ::Reactor* api, int fd) {
  Shard* shard = of(api);
  if (fd == shard->listener_) {
    shard->accept_own(fd);
  } else if (shard->accept_pause_.owns(fd)) {
    shard->accept_pause_.resume(api);
  } else if (shard->settings_.on_data) {
    shard->settings_.on_data(api, fd);
  }
}

void Shard::on_shutdown(struct ::Reactor* api, int fd) {
  Shard* shard = of(api);
  if (fd == shard->listener_ || shard->accept_pause_.owns(fd)) return;
  if (shard->settings_.on_shutdown) shard->settings_.on_shutdown(api, fd);
}

void Shard::on_close(struct ::Reactor* api, int fd) {
  Shard* shard = of(api);
  // The listener and the pause timer close at the stop. Their numbers are forgotten then: a
  // connection that gets one during the drain is the user's, not accept_own's or resume's
  // (whose accept4 would fail on it and detach it, never to be shut down or closed).
  if (fd == shard->listener_) {
    shard->listener_ = -1;
    return;
  }
  if (shard->accept_pause_.owns(fd)) {  // tested inline: on_close runs for every connection
    shard->pause_timer_closed(fd);
    return;
  }
  if (shard->settings_.on_close) shard->settings_.on_close(api, fd);
}

[[gnu::noinline]] void Shard::pause_timer_closed(int fd) {
  // A paused listener is detached: it closes with its timer, and no on_close of its own
  // comes. An attached one keeps its number until its own close, later in the stop.
  if (accept_pause_.closed(fd) == AcceptPause::Closed::kTimerAndListener) listener_ = -1;
}

// SO_REUSEPORT mode (and a lone shard's): accept in bounded batches on this shard's own
// listener, each connection opened at once, here (on_open through the reactor's hook). With
// defer_accept_s its request is read at once too.
// Under a share, a batch takes no more than the room left; a full shard holds its listener
// (AcceptPause::hold) until a close (release_below_share). One that filled up in a batch finds
// out at once: the listener made progress, so on_data runs again next iteration.
void Shard::accept_own(int listener) {
  const bool input_waiting = settings_.defer_accept_s != 0;
  uint64_t batch = settings_.accept_batch ? settings_.accept_batch : engine::kAcceptBatch;
  if (share_) {
    const uint64_t open = connections();
    if (open >= share_) {
      accept_pause_.hold(&api_, listener);
      return;
    }
    batch = std::min(batch, share_ - open);
  }
  accept_batch(&api_, listener, static_cast<unsigned>(batch), accept_pause_,
               [&](int fd) { engine::open_accepted(&api_, &fd, 1, input_waiting); });
}

}  // namespace shards
