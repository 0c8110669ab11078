// File: shards/shard.h
// One shard: a worker thread driving one engine::Reactor. Accepted fds and sock_ calls from
// other threads reach it through the reactor's inbox (engine/inbox.h), the one cross-thread
// door.
//
// Threads: construct, start() and join() from the controlling thread; everything the shard
// owns (its reactor, the fds attached to it, its pool) is touched only by its own thread once
// started, except through the inbox and the load card (load()).
// Ownership: the shard owns its reactor's engine state and the reactor's inbox, both
// destroyed with the shard, after join(): a call posted while the shard stops lands in live
// memory and is discarded then, and the shard's counters stay readable by the other shards'
// threads until every shard has stopped (sock_server_metrics during a stop).
#ifndef SHARDS_SHARD_H_
#define SHARDS_SHARD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <memory>
#include <thread>

#include "alloc/cache_line.h"
#include "engine/inbox.h"
#include "engine/libreact.h"
#include "engine/reactor.h"
#include "shards/accept_pause.h"
#include "shards/connection_limit.h"
#include "shards/server.h"

namespace shards {

class Shard {
 public:
  // Records the settings; init() makes what can fail. listener >= 0: this shard accepts on
  // its own listener (SO_REUSEPORT, or a lone shard's), holding at most `share` connections
  // (0: no limit; connection_limit.h). listener < 0: the acceptor hands it connections, and
  // `waiter` (non-null under a connection limit) is told when it holds fewer.
  // `server`: what sock_server_of() answers for this shard's reactor.
  Shard(const SockServerSettings& settings, int index, int listener, SockServer* server,
        uint64_t share, const LimitWaiter* waiter);
  // After join(), or for a shard never started: a shard that never ran is stopped here first,
  // on this thread (the thread that made it), which closes what its reactor holds (the
  // listener, the pause timer) as a stop does. Then discards the calls posted to the shard
  // after its stop completed and deletes the reactor's engine state.
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Creates the reactor (its pool, epoll set, limits, inbox), then the accept-pause timer and
  // the listener's registration, last. False with errno (EMFILE, ENOMEM...) on failure: the
  // listener is then not attached, and still the caller's; once init() succeeded, the
  // shard's reactor closes it at its stop.
  bool init();
  // After init(). Returns once the shard's thread owns the reactor: from then on every sock_
  // call for its fds from another thread is posted to it. False with errno (EAGAIN: no thread
  // could be made) if the thread did not start.
  bool start();
  // Any thread: begins the graceful stop (the reactor's stop: on_shutdown, drain, close).
  void request_stop();
  void join();

  struct ::Reactor* api() { return &api_; }

  // The load placement and the connection limit compare, as the shard last published it
  // (publish_load()): at most one loop iteration old. Any thread; loads of the shard's load
  // card (`taken` with acquire, the rest relaxed), one cache line that only the shard's thread
  // writes, and only when a figure changed. Published only where something reads it (the
  // acceptor thread, under least-loaded placement or a connection limit); all zero elsewhere.
  struct Load {
    uint64_t connections;  // open connections (the listener and the pause timer excluded)
    // Connections the acceptor handed over that this shard has taken off its inbox so far,
    // opened or closed because their open failed (Reactor::handed_over_taken): the acceptor
    // counts what it handed, so handed - taken is what is still in flight (placement would
    // otherwise see stale counts during a burst and pile it on one shard). Neither a failed
    // open nor a sock_open from another thread moves it apart from what was handed.
    uint64_t taken;
    uint64_t queued_bytes;  // bytes queued on its connections (the reactor's total)
  };
  Load load() const;
  // Under a limit with the acceptor: what the acceptor counts for this shard is held() plus
  // what it handed the shard (modulo 2^64): the connections the shard held when it last
  // published, and those handed since that it had not taken then. Never fewer than the shard
  // holds now, with those still in flight. Any thread; a seq_cst load, the acceptor's half of
  // LimitWaiter's handshake.
  uint64_t held() const { return load_card_.held.load(std::memory_order_seq_cst); }

  // The shard behind a reactor pointer handed to a callback.
  static Shard* of(struct ::Reactor* api);

  const SockServerSettings& settings() const { return settings_; }
  SockServer* server() const { return server_; }

 private:
  void run(std::latch& owned);
  static void on_data(struct ::Reactor* api, int fd);
  static void on_shutdown(struct ::Reactor* api, int fd);
  static void on_close(struct ::Reactor* api, int fd);
  // on_close of the pause timer, out of the way of every connection's close.
  void pause_timer_closed(int fd);
  void accept_own(int listener);
  // Connections attached here: all but the listener (while watched) and the pause timer.
  uint64_t connections() const;
  // Shard thread, once per loop iteration: stores each figure of the load card that changed,
  // and tells the waiter (if any) when the shard holds fewer connections than it last said.
  void publish_load();
  // Shard thread, once per loop iteration under a share: watches the listener again once a
  // connection closed below the share.
  void release_below_share();

  // First member: Shard::of() maps the callbacks' reactor pointer back to the shard.
  struct ::Reactor api_;
  SockServerSettings settings_;
  int index_;
  int listener_;
  SockServer* server_;
  engine::Reactor* engine_ = nullptr;
  std::unique_ptr<engine::Inbox> inbox_;
  std::thread thread_;
  bool started_ = false;
  AcceptPause accept_pause_;
  // The acceptor thread reads the card (least-loaded placement, a connection limit): other
  // shards skip publish_load() and its loads.
  bool publishes_load_;
  uint64_t share_;               // the most connections accept_own() lets in; 0: no limit
  const LimitWaiter* waiter_;  // SOCK_ACCEPT_THREAD under a limit; else null

  // Written by the shard thread (once per loop iteration and only for a figure that changed;
  // `taken` with release, then, under a limit, `held` seq_cst: publish_load()), read by the
  // acceptor (one copy per accept batch). A line of its
  // own: a store invalidates the acceptor's copy of this line and nothing else, and writes
  // to the shard's other fields never invalidate it.
  struct alignas(alloc::kCacheLineBytes) LoadCard {
    std::atomic<uint64_t> connections{0};
    std::atomic<uint64_t> taken{0};
    std::atomic<uint64_t> queued_bytes{0};
    // Under a limit with the acceptor only: connections - taken, modulo 2^64, in one figure,
    // stored seq_cst (the shard's half of LimitWaiter's handshake; held()).
    std::atomic<uint64_t> held{0};
  };
  static_assert(sizeof(LoadCard) == alloc::kCacheLineBytes, "the load card is one cache line");
  LoadCard load_card_;
};

}  // namespace shards

#endif  // SHARDS_SHARD_H_
