// The sharded server: shards, the acceptor (SOCK_ACCEPT_THREAD) and the C API of server.h.
#include "shards/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <latch>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "engine/accept.h"
#include "engine/defaults.h"
#include "engine/reactor.h"
#include "engine/socket_ops.h"
#include "shards/accept_batch.h"
#include "shards/accept_pause.h"
#include "shards/connection_limit.h"
#include "shards/shard.h"
#include "shards/start_thread.h"

namespace shards {
namespace {

int port_of(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

}  // namespace

// SOCK_ACCEPT_THREAD: a reactor of its own on its own thread, watching the one listener. Each
// wakeup accepts a batch, sorts it by shard, and hands each shard its part in one post
// (engine::open_accepted), which costs a sleeping shard one wakeup, not one per connection.
// Under a connection limit the batch takes no more than the room left, counted from the
// shards' load cards; at the limit the listener is held (AcceptPause::hold) until a shard
// publishes a close and wakes the acceptor (LimitWaiter, connection_limit.h).
class Acceptor {
 public:
  Acceptor(std::vector<std::unique_ptr<Shard>>& shards, const SockServerSettings& settings,
           int listener, LimitWaiter& waiter)
      : api_{}, shards_(shards), settings_(settings), listener_(listener), waiter_(waiter) {
    api_.on_data = &Acceptor::on_data;
    // The stop closes the pause timer; a listener paused then is detached, and must be closed
    // with it (pause_.closed), not when the server is freed, after every shard's drain: until
    // then the kernel would complete connects into a backlog that nobody accepts.
    api_.on_close = &Acceptor::on_close;
    // Room for a whole batch per shard up front: accepting never allocates.
    for (auto& fds : batches_) fds.reserve(batch_);
  }
  // After every shard joined (a shard may wake the acceptor's reactor until then), or for an
  // acceptor never started: one that never ran is stopped here first, on the thread that
  // made it, which closes what its reactor holds (the pause timer, the listener) as a stop
  // does. Then deletes the reactor's engine state, kept past the stop.
  ~Acceptor() {
    if (!engine_) return;  // init() made no reactor
    if (!started_) {
      reactor_stop(&api_);
      // -1 once the stop completed (errno 0) or the loop failed: either way it is over.
      while (engine_->run_once(0) >= 0) {}
    }
    engine_->bind_owner_thread();
    api_._impl = nullptr;
    delete engine_;
  }
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  // Makes the reactor and the pause timer, then watches the listener, last. False with errno
  // on failure: the listener is then not attached, and still the caller's. The reactor's
  // engine state outlives its stop, until ~Acceptor, for the shards' wakeups (LimitWaiter).
  bool init() {
    const bool timer = pause_.init(&api_);  // the timer's reactor_add makes the reactor
    engine_ = engine::Reactor::of(&api_, false);
    if (engine_) engine_->set_keep_after_stop();
    return timer && reactor_add(&api_, listener_) == 0;
  }
  engine::Reactor* engine() { return engine_; }
  // Returns once the acceptor's thread owns its reactor; false with errno (EAGAIN) if the
  // thread could not be made.
  bool start() {
    std::latch owned(1);
    const bool started = start_thread(&thread_, [this, &owned] {
      engine_->bind_owner_thread();
      owned.count_down();
      // run_once returns -1 with errno 0 once the stop completed (the listener and timer are
      // closed; the engine state stays, for ~Acceptor).
      while (engine_->run_once(REACTOR_TICK) >= 0 || errno != 0) {
        if (pause_.held()) release_if_room();
      }
      // A thread made later may get this one's id: it must not pass for the owner.
      engine_->release_owner_thread();
    });
    if (!started) return false;
    owned.wait();
    started_ = true;
    return true;
  }
  void stop_and_join() {
    reactor_stop(&api_);
    if (thread_.joinable()) thread_.join();
  }

 private:
  static void on_data(struct ::Reactor* api, int fd) {
    auto* self = reinterpret_cast<Acceptor*>(api);
    if (self->pause_.owns(fd)) {
      self->pause_.resume(api);
      return;
    }
    self->accept_waiting();
  }

  static void on_close(struct ::Reactor* api, int fd) {
    reinterpret_cast<Acceptor*>(api)->pause_.closed(fd);
  }

  // Bounded per wakeup (accept_batch.h), so a storm of connects cannot starve the pause timer
  // or a stop; under a limit, by the room left too. At the limit the listener is held; one
  // that filled up in a batch finds out at once: the listener made progress, so on_data runs
  // again next iteration.
  void accept_waiting() {
    unsigned batch = batch_;
    if (settings_.max_connections) {
      const uint64_t open = open_connections();
      if (open >= settings_.max_connections) {
        hold();
        return;
      }
      batch = static_cast<unsigned>(std::min<uint64_t>(batch, settings_.max_connections - open));
    }
    // One look at each shard's load card per batch, not per connection: at most one line
    // transfer per shard, and only when the shard published a change since the last batch.
    if (settings_.placement == SOCK_PLACE_LEAST_LOADED) {
      for (std::size_t i = 0; i < shards_.size(); ++i) loads_[i] = shards_[i]->load();
    }
    shards::accept_batch(&api_, listener_, batch, pause_, [this](int fd) {
      const std::size_t shard = pick();
      batches_[shard].push_back(fd);
      // Counted per connection placed, not per accept4: every batch ends with one that finds
      // EAGAIN, and counting it would send each lone connection to shard 0.
      ++handed_[shard];
      next_ = shard + 1;
    });
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      std::vector<int>& fds = batches_[i];
      if (fds.empty()) continue;
      const std::size_t handed = engine::open_accepted(shards_[i]->api(), fds.data(), fds.size(),
                                                       settings_.defer_accept_s != 0);
      if (handed < fds.size()) {
        // Out of memory for the post (the fds are closed): they never reach the shard, so
        // placement must not count them, and the listener rests as it does on EMFILE.
        handed_[i] -= fds.size() - handed;
        if (is_exhaustion(errno)) pause_.pause(&api_, listener_, errno);
      }
      fds.clear();
    }
  }

  // The connections the shards hold, with those handed over and not yet taken: never fewer
  // than that (Shard::held). Once per batch, and after each iteration while held.
  uint64_t open_connections() const {
    uint64_t open = 0;
    for (std::size_t i = 0; i < shards_.size(); ++i) open += shards_[i]->held() + handed_[i];
    return open;
  }

  // At the limit: the listener rests until a shard publishes a close. The shards' figures are
  // read again after the flag is up, for a close published before it.
  void hold() {
    pause_.hold(&api_, listener_);
    if (!pause_.held()) return;  // the listener was not attached here: nothing to wait for
    waiter_.wait();
    release_if_room();
  }

  // After each iteration while held (a shard's wakeup, the tick): watch the listener again
  // if a connection closed.
  void release_if_room() {
    if (open_connections() >= settings_.max_connections) return;
    waiter_.stop_waiting();
    pause_.release(&api_);
  }

  // The shard for the next connection: the next in turn, or the least loaded.
  std::size_t pick() const {
    if (settings_.placement != SOCK_PLACE_LEAST_LOADED) return next_ % shards_.size();
    // A shard publishes its load once per loop iteration, and loads_ holds what they said
    // when this batch began; connections handed to a shard since its last publication (in
    // its inbox, or earlier in this batch) count too.
    std::size_t best = 0;
    uint64_t best_load = UINT64_MAX;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      const Shard::Load& l = loads_[i];
      const uint64_t in_flight = handed_[i] - std::min<uint64_t>(handed_[i], l.taken);
      const uint64_t load = l.connections + in_flight;
      if (load < best_load ||
          (load == best_load && l.queued_bytes < loads_[best].queued_bytes)) {
        best = i;
        best_load = load;
      }
    }
    return best;
  }

  // First member: the callbacks map the reactor pointer back to the acceptor.
  struct ::Reactor api_;
  std::vector<std::unique_ptr<Shard>>& shards_;
  SockServerSettings settings_;
  int listener_;
  LimitWaiter& waiter_;
  engine::Reactor* engine_ = nullptr;  // api_'s, from init() to ~Acceptor
  AcceptPause pause_;
  const unsigned batch_ = settings_.accept_batch ? settings_.accept_batch : engine::kAcceptBatch;
  std::size_t next_ = 0;  // round-robin: the shard after the last one given a connection
  std::vector<uint64_t> handed_ = std::vector<uint64_t>(shards_.size());
  // Least-loaded placement: each shard's load card, copied at the start of the batch.
  std::vector<Shard::Load> loads_ = std::vector<Shard::Load>(shards_.size());
  std::vector<std::vector<int>> batches_ = std::vector<std::vector<int>>(shards_.size());
  std::thread thread_;
  bool started_ = false;
};

}  // namespace shards

struct SockServer {
  SockServerSettings settings{};
  std::string address;
  std::string port;
  int bound_port = 0;
  // Before the shards and the acceptor: it outlives both.
  shards::LimitWaiter limit_waiter;
  std::vector<std::unique_ptr<shards::Shard>> shards;
  std::unique_ptr<shards::Acceptor> acceptor;
  int stop_fd = -1;  // eventfd: sock_server_request_stop() -> sock_server_wait()
};

namespace {

// Stops what runs and joins it: the acceptor first (nothing more may be handed to a shard
// that is stopping), then every shard at once. A shard or an acceptor that never started is
// left to its destructor.
void stop_threads(SockServer& server) {
  if (server.acceptor) server.acceptor->stop_and_join();
  for (auto& shard : server.shards) shard->request_stop();
  for (auto& shard : server.shards) shard->join();
}

}  // namespace

extern "C" {

struct SockServer* sock_server_start_fn(struct SockServerSettings settings) {
  if (!settings.port ||
      !engine::watermarks_valid(settings.high_watermark, settings.low_watermark)) {
    errno = EINVAL;
    return nullptr;
  }
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const int threads =
      settings.threads > 0 ? settings.threads : static_cast<int>(cpus > 0 ? cpus : 1);
  const bool reuse_port = settings.accept_mode == SOCK_ACCEPT_REUSEPORT;
  // What may throw before any fd or thread exists; the shards' and the acceptor's own
  // allocations are caught below, where fail() undoes what was made.
  std::unique_ptr<SockServer> server;
  std::vector<int> listeners;
  std::string port;
  try {
    server = std::make_unique<SockServer>();
    if (settings.address) server->address = settings.address;
    server->port = settings.port;
    port = server->port;
    listeners.reserve(static_cast<std::size_t>(reuse_port ? threads : 1));
    server->shards.reserve(static_cast<std::size_t>(threads));
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return nullptr;
  }
  settings.address = settings.address ? server->address.c_str() : nullptr;
  settings.port = server->port.c_str();
  server->settings = settings;
  server->stop_fd = eventfd(0, EFD_CLOEXEC);
  if (server->stop_fd < 0) return nullptr;
  sock_max_capacity();  // one fd per connection: take all the process may have

  for (int i = 0; i < (reuse_port ? threads : 1); ++i) {
    const int fd =
        engine::listen_socket(settings.address, port.c_str(), reuse_port, settings.defer_accept_s);
    if (fd < 0) {
      const int err = errno;
      std::fprintf(stderr, "sock_server_start: cannot listen on %s:%s: %s\n",
                   settings.address ? settings.address : "*", port.c_str(), std::strerror(err));
      for (const int l : listeners) close(l);
      close(server->stop_fd);
      errno = err;
      return nullptr;
    }
    if (listeners.empty()) {
      server->bound_port = shards::port_of(fd);
      port = std::to_string(server->bound_port);  // port "0": the others share the chosen one
    }
    listeners.push_back(fd);
  }
  // From here, a failure undoes everything: the threads that started are stopped and joined,
  // the shards and the acceptor that never ran are stopped on this thread by their
  // destructors (which closes the listeners their reactors hold), and the listeners no
  // reactor took yet are closed here.
  std::size_t taken = 0;  // listeners[0, taken) are attached to a shard's or the acceptor's reactor
  const auto fail = [&](const char* what) -> SockServer* {
    const int err = errno;
    std::fprintf(stderr, "sock_server_start: %s: %s\n", what, std::strerror(err));
    stop_threads(*server);
    close(server->stop_fd);
    server.reset();
    for (std::size_t i = taken; i < listeners.size(); ++i) close(listeners[i]);
    errno = err;
    return nullptr;
  };
  // One shard leaves the acceptor nothing to place: the shard accepts on the one listener
  // itself, as in reuseport mode, and no connection pays a handoff between two threads.
  const bool shards_accept = reuse_port || threads == 1;
  const shards::LimitWaiter* waiter =
      !shards_accept && settings.max_connections ? &server->limit_waiter : nullptr;
  try {
    for (int i = 0; i < threads; ++i) {
      const int listener = shards_accept ? listeners[static_cast<std::size_t>(i)] : -1;
      const uint64_t share = shards::connection_share(
          settings.max_connections, static_cast<uint64_t>(threads), static_cast<uint64_t>(i));
      server->shards.push_back(std::make_unique<shards::Shard>(server->settings, i, listener,
                                                               server.get(), share, waiter));
      if (!server->shards.back()->init()) return fail("cannot make a shard's reactor");
      if (listener >= 0) taken = static_cast<std::size_t>(i) + 1;
    }
    if (!shards_accept) {
      server->acceptor = std::make_unique<shards::Acceptor>(
          server->shards, server->settings, listeners[0], server->limit_waiter);
      if (!server->acceptor->init()) return fail("cannot make the acceptor's reactor");
      taken = 1;
      server->limit_waiter.set_acceptor(server->acceptor->engine());
    }
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return fail("cannot make a shard or the acceptor");
  }
  for (auto& shard : server->shards) {
    if (!shard->start()) return fail("cannot start a shard's thread");
  }
  if (server->acceptor && !server->acceptor->start()) {
    return fail("cannot start the acceptor's thread");
  }
  return server.release();
}

int sock_server_port(const struct SockServer* server) { return server ? server->bound_port : -1; }

int sock_server_shard_count(const struct SockServer* server) {
  return server ? static_cast<int>(server->shards.size()) : -1;
}

struct Reactor* sock_server_shard(struct SockServer* server, int i) {
  if (!server || i < 0 || static_cast<std::size_t>(i) >= server->shards.size()) return nullptr;
  return server->shards[static_cast<std::size_t>(i)]->api();
}

ssize_t sock_server_metrics(struct SockServer* server, int format, const char* prefix,
                            char* buf, size_t capacity) {
  if (!server) {
    errno = EINVAL;
    return -1;
  }
  // Shard reactors, not their engine state: sock_metrics reads each one's counters.
  std::vector<struct Reactor*> reactors;
  try {
    reactors.reserve(server->shards.size());
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return -1;
  }
  for (const auto& shard : server->shards) reactors.push_back(shard->api());
  return sock_metrics(reactors.data(), reactors.size(), format, prefix, buf, capacity);
}

struct SockServer* sock_server_of(struct Reactor* reactor) {
  return reactor ? shards::Shard::of(reactor)->server() : nullptr;
}

void* sock_server_udata(struct Reactor* reactor) {
  return reactor ? shards::Shard::of(reactor)->settings().udata : nullptr;
}

void sock_server_request_stop(struct SockServer* server) {
  if (!server) return;
  const uint64_t one = 1;
  // Async-signal-safe: one write to an eventfd.
  [[maybe_unused]] const ssize_t r = write(server->stop_fd, &one, sizeof one);
}

void sock_server_wait(struct SockServer* server) {
  if (!server) return;
  uint64_t value;
  while (read(server->stop_fd, &value, sizeof value) < 0 && errno == EINTR) {}
  // Leave the count set, so a second wait (or a stop right after) returns at once.
  sock_server_request_stop(server);
}

int sock_server_stop(struct SockServer* server) {
  if (!server) {
    errno = EINVAL;
    return -1;
  }
  stop_threads(*server);
  close(server->stop_fd);
  delete server;
  return 0;
}

}  // extern "C"
