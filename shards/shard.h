// File: shards/shard.h
// One shard: a worker thread driving one engine::Reactor. Accepted fds and sock_ calls from
// other threads reach it through the reactor's inbox (engine/inbox.h), the one cross-thread
// door.
//
// Threads: construct, start() and join() from the controlling thread; everything the shard
// owns (its reactor, the fds attached to it, its pool) is touched only by its own thread once
// started, except through the inbox and the atomics documented below.
// Ownership: the shard owns its reactor's engine state and the reactor's inbox, both
// destroyed with the shard, after join(): a call posted while the shard stops lands in live
// memory and is discarded then, and the shard's counters stay readable by the other shards'
// threads until every shard has stopped (sock_server_metrics during a stop).
#ifndef SHARDS_SHARD_H_
#define SHARDS_SHARD_H_

#include <atomic>
#include <cstddef>
#include <latch>
#include <memory>
#include <thread>

#include "engine/inbox.h"
#include "engine/libreact.h"
#include "engine/reactor.h"
#include "shards/accept_pause.h"
#include "shards/server.h"

namespace shards {

class Shard {
 public:
  // Creates the reactor (its pool, epoll set, limits). listener >= 0: this shard accepts on its
  // own SO_REUSEPORT listener. Aborts with a message if the engine cannot start.
  // `server`: what sock_server_of() answers for this shard's reactor.
  Shard(const SockServerSettings& settings, int index, int listener, SockServer* server);
  // After join() (or without start()): discards the calls posted to the shard after its stop
  // completed and deletes the reactor's engine state.
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Returns once the shard's thread owns the reactor: from then on every sock_ call for its
  // fds from another thread is posted to it.
  void start();
  // Any thread: begins the graceful stop (the reactor's stop: on_shutdown, drain, close).
  void request_stop();
  void join();

  struct ::Reactor* api() { return &api_; }
  // Any thread: the load figures placement compares, read from the reactor's own counters
  // (relaxed, a recent snapshot; the engine state lives as long as the shard).
  std::size_t connections() const;
  // Connections opened on this shard so far (through its on_open hook: handed over by the
  // acceptor, or accepted on its own listener): the acceptor counts what it handed, so
  // handed - opened is what is still in flight in the inbox (placement would otherwise see
  // stale counts during a burst and pile it on one shard).
  std::size_t opened() const { return opened_.load(std::memory_order_relaxed); }
  // Bytes queued on the shard's connections (the engine's per-reactor total).
  uint64_t queued_bytes() const { return engine_->queued_total(); }

  // The shard behind a reactor pointer handed to a callback.
  static Shard* of(struct ::Reactor* api);

  const SockServerSettings& settings() const { return settings_; }
  SockServer* server() const { return server_; }

 private:
  void run(std::latch& owned);
  static void on_data(struct ::Reactor* api, int fd);
  static void on_shutdown(struct ::Reactor* api, int fd);
  static void on_close(struct ::Reactor* api, int fd);
  static void on_open(struct ::Reactor* api, int fd);
  void accept_own(int listener);

  // First member: Shard::of() maps the callbacks' reactor pointer back to the shard.
  struct ::Reactor api_;
  SockServerSettings settings_;
  int index_;
  int listener_;
  SockServer* server_;
  engine::Reactor* engine_;
  std::unique_ptr<engine::Inbox> inbox_;
  std::thread thread_;
  AcceptPause accept_pause_;
  // Written by the shard thread, read by the acceptor for placement.
  std::atomic<std::size_t> opened_{0};
};

}  // namespace shards

#endif  // SHARDS_SHARD_H_
