/* shards/server.h: the sharded server. N worker threads, each driving one reactor (a shard:
 * its own epoll set, per-fd state and packet pool); accepted connections are handed to the
 * shards, and every sock_ call for an fd runs on the shard that owns it (see libsock.h,
 * "Threads").
 *
 * Errors: sock_server_start returns NULL with errno set (and a message on stderr naming the
 *   problem) when it cannot listen, make a shard's or the acceptor's reactor (EMFILE,
 *   ENOMEM...) or start a thread (EAGAIN); what it had made is closed and joined by then.
 *   Other calls return -1 with errno.
 * Ownership: the server is the caller's from start until sock_server_stop() returns, which
 *   frees it. Settings strings are copied.
 * Threads: start/stop/wait from one controlling thread; sock_server_request_stop() from any
 *   thread or a signal handler. Callbacks run on the shard thread that owns the fd; the
 *   `struct Reactor*` they receive is that shard's.
 */
#ifndef SHARDS_SERVER_H_
#define SHARDS_SERVER_H_

/* Siblings: found beside this header once installed, through the engine's include path in
 * this tree (engine/BUILD strips its prefix). */
#include "libreact.h"
#include "libsock.h"

#ifdef __cplusplus
extern "C" {
#endif

/* These declarations are what the shared library exports: tools/install builds everything
 * else with hidden visibility (docs/install.md). */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/** How connections reach the shards. */
enum SockAcceptMode {
  /** One acceptor thread accepts and hands each fd to a shard (placement below). With one
   * shard there is nothing to place: that shard accepts on the listener itself. */
  SOCK_ACCEPT_THREAD = 0,
  /** One SO_REUSEPORT listener per shard; the kernel spreads connections by address hash. */
  SOCK_ACCEPT_REUSEPORT = 1
};

/** Which shard gets an accepted connection (SOCK_ACCEPT_THREAD). */
enum SockPlacement {
  SOCK_PLACE_ROUND_ROBIN = 0,
  /** Fewest connections, then fewest bytes queued. */
  SOCK_PLACE_LEAST_LOADED = 1
};

/** The idle_timeout_ms that turns the idle timeout off. */
#define SOCK_NO_TIMEOUT 0xffffffffu

struct SockServerSettings {
  /** Listening address (NULL: every address) and port ("0": a free one; see sock_server_port). */
  const char* address SOCK_CXX_ZERO_;
  const char* port SOCK_CXX_ZERO_;
  /** Shards (worker threads); 0: one per online CPU. */
  int threads SOCK_CXX_ZERO_;
  /** Pin shard i to CPU i (modulo the CPUs online). */
  int pin_cpus SOCK_CXX_ZERO_;
  /** enum SockAcceptMode, enum SockPlacement. */
  int accept_mode SOCK_CXX_ZERO_;
  int placement SOCK_CXX_ZERO_;
  /** The reactor callbacks, run on the owning shard's thread. */
  void (*on_data)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  void (*on_ready)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  void (*on_shutdown)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  void (*on_close)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** Extension: a new connection is open on its shard (before its first on_data). */
  void (*on_open)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** Per-connection idle timeout; 0: 30 s; SOCK_NO_TIMEOUT: none. */
  unsigned idle_timeout_ms SOCK_CXX_ZERO_;
  /** Watermarks and per-shard memory budget (struct ReactorLimits; 0: its defaults). */
  size_t high_watermark SOCK_CXX_ZERO_;
  size_t low_watermark SOCK_CXX_ZERO_;
  size_t shard_memory_budget SOCK_CXX_ZERO_;
  /** How long a stop lets queued output drain; 0: 5 s. */
  unsigned stop_timeout_ms SOCK_CXX_ZERO_;
  /** Connections accepted per wakeup before other work runs; 0: 64. */
  unsigned accept_batch SOCK_CXX_ZERO_;
  /** Extension, for protocols whose client speaks first (HTTP): TCP_DEFER_ACCEPT on the
   * listeners. The kernel hands a connection over once its first bytes arrived, or after about
   * this many seconds if none do (it then retransmits its SYN-ACK, and the client's ACK
   * completes the accept). A connection then costs no wakeup of its own before its request,
   * and its first on_data runs at once, before its fd enters the shard's epoll set (one that
   * closes in that callback never does): about a sixth of a short connection's CPU
   * (bench/RESULTS.md). A client silent past the deferral gets an on_data with nothing to read
   * at first. 0: off. */
  unsigned defer_accept_s SOCK_CXX_ZERO_;
  /** Handed back by sock_server_udata(). */
  void* udata SOCK_CXX_ZERO_;
  /** Extension: the most connections the server holds at once; 0: no limit. A connection
   * counts from its accept until its close, a lingering close included (it holds its fd), as
   * does any fd a callback attaches to a shard itself (sock_connect, reactor_add): what the
   * limit guards is the fds and memory they hold. It gates accepts only: an fd attached
   * otherwise counts toward it but is never refused, and may take the count past it. At the
   * limit the server stops watching its
   * listeners (no accept-and-close, no wakeup per connect: connects wait in the kernel's
   * backlog) and watches them again once a connection closed. With the acceptor thread the
   * limit is the server's: the acceptor sums the shards' counts before each accept batch.
   * Shards that accept on their own listeners (SOCK_ACCEPT_REUSEPORT, or one shard) each keep
   * to a share instead, max / threads, the first max % threads shards one more (at least 1
   * each, so with fewer than one per shard the server holds one per shard): one count for
   * all would cost an atomic read-modify-write on a shared line per connection. A connection
   * the kernel hands to a full shard waits for that shard, even while another has room. */
  unsigned max_connections SOCK_CXX_ZERO_;
};

struct SockServer;

/** Listens and starts the shards. Returns the server, or NULL with errno (EINVAL: no port, or
 * a low watermark above the high one in effect, as reactor_set_limits refuses it). */
struct SockServer* sock_server_start_fn(struct SockServerSettings settings);
#ifdef __cplusplus
#define sock_server_start(...) sock_server_start_fn(SockServerSettings{__VA_ARGS__})
#else
#define sock_server_start(...) sock_server_start_fn((struct SockServerSettings){__VA_ARGS__})
#endif

/** The port the server listens on. */
int sock_server_port(const struct SockServer* server);

/** The number of shards, and shard i's reactor (for sock_pool_stats and the like). */
int sock_server_shard_count(const struct SockServer* server);
struct Reactor* sock_server_shard(struct SockServer* server, int i);

/** The profiler's metrics of every shard (shard="i" is sock_server_shard(server, i)), with
 * sock_metrics' format, prefix, buffer and return rules (libsock.h). Any thread while the
 * server runs; -1 with errno EINVAL for a NULL server. */
ssize_t sock_server_metrics(struct SockServer* server, int format, const char* prefix,
                            char* buf, size_t capacity);

/** The server whose shard `reactor` is (the reactor a callback received); NULL for NULL. */
struct SockServer* sock_server_of(struct Reactor* reactor);

/** The settings' udata, from inside a callback (reactor: the one the callback received). */
void* sock_server_udata(struct Reactor* reactor);

/** Asks the server to stop; returns at once. Async-signal-safe, any thread. */
void sock_server_request_stop(struct SockServer* server);

/** Blocks until a stop is requested (or returns at once if it was). */
void sock_server_wait(struct SockServer* server);

/** Stops gracefully and frees the server: stop accepting, on_shutdown for every connection,
 * let queued output drain up to stop_timeout_ms, close the rest (on_close once each), join
 * every thread. Returns 0, or -1 with errno EINVAL for NULL. */
int sock_server_stop(struct SockServer* server);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SHARDS_SERVER_H_ */
