/* libreact: an edge-triggered epoll reactor, the seed's API kept by name and meaning.
 *
 * Errors: functions returning int return -1 and set errno on failure (EBADF for a negative,
 *   out-of-range or unknown fd; EINVAL for a NULL reactor). Nothing is half done on error.
 * Ownership: the caller owns `struct Reactor` and must keep it alive (and unmoved) until
 *   reactor_review() has returned -1 after reactor_stop(), or until reactor_stop() was
 *   followed by that final review. The engine state behind `_impl` is created on first use
 *   and freed by that final review.
 * Threads: a reactor belongs to one owner thread: the thread that drives it with
 *   reactor_review(), and before its first review the thread whose call created its engine
 *   state (its first reactor_ or sock_ call with it). Hand it over like any object: the
 *   setting-up thread's last call must happen before the first reactor_review() on the new
 *   thread (set it up, then start that thread). Every call here must come from the owner
 *   thread, except reactor_stop(), which any thread and any signal handler may call.
 *   Callbacks run on the owner thread, inside reactor_review(). Other threads reach the
 *   reactor's fds through libsock's calls, which are posted to the owner thread and wake it
 *   (libsock.h, "Threads"). Several reactors may run at once, each on its own thread.
 *
 * A static reactor needs no reactor_init(): the first reactor_add() or reactor_review()
 * initialises it:
 *
 *   struct Reactor r = {.on_data = on_data, .maxfd = 1024};
 *   reactor_add(&r, listen_fd);
 *   while (reactor_review(&r) >= 0) {}
 */
#ifndef LIBREACT_H
#define LIBREACT_H

#include <stddef.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* These declarations are what the shared library exports: tools/install builds everything
 * else with hidden visibility (docs/install.md). */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define LIBREACT_VERSION "1.0.0"

/** Events taken from the kernel per reactor_review() call. Like REACTOR_TICK, a setting of the
 * library's build: an installed libreact.h pins it (tools/install). */
#ifndef REACTOR_MAX_EVENTS
#define REACTOR_MAX_EVENTS 512
#endif
/** Longest wait of one reactor_review() call, in milliseconds. */
#ifndef REACTOR_TICK
#define REACTOR_TICK 1000
#endif

/* In C++, fields left out of a designated initializer take these zero defaults (C zero-fills
 * them), so the seed's `{.on_data = f, .maxfd = 1024}` style also compiles cleanly as C++
 * (-Wmissing-field-initializers). libsock.h uses it for struct SockWriteOpt too. */
#ifdef __cplusplus
#define SOCK_CXX_ZERO_ = 0
#else
#define SOCK_CXX_ZERO_
#endif

struct Reactor {
  /** Data is ready to read on fd (or, for a listening fd, connections wait to be accepted).
   * The reactor is edge-triggered: read until sock_read() returns 0. For fds opened with
   * the sock_ API, a callback that made progress without draining is called again on the
   * next review, so a partial read never stalls. */
  void (*on_data)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** fd may be written: a sock_connect() completed, or a write queue that had filled the
   * kernel buffer (EAGAIN) has drained completely. */
  void (*on_ready)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** The reactor is stopping: called once for every attached fd before it is closed. */
  void (*on_shutdown)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** fd was closed (by either side, an error or the reactor). Called exactly once per
   * closed fd, after close(2): the number may already belong to a new connection, so use
   * it as a key only. Queued data not sent by then was dropped. */
  void (*on_close)(struct Reactor* reactor, int fd) SOCK_CXX_ZERO_;
  /** Wall-clock seconds at the last review. Read-only. */
  time_t last_tick SOCK_CXX_ZERO_;
  /** fds >= maxfd are refused with EBADF; 0 means the process's fd capacity. */
  int maxfd SOCK_CXX_ZERO_;
  /** Engine state; created on first use. Never touch it. */
  void* _impl SOCK_CXX_ZERO_;
};

/** Initialises the reactor's engine state (epoll set, packet pool). Optional: the first
 * reactor_add()/reactor_review() does it. Returns 0, or -1 with errno. */
int reactor_init(struct Reactor* reactor);

/** Waits up to REACTOR_TICK ms for events and runs the callbacks, flushes queued writes
 * and closes what is due. Returns the number of events handled (>= 0), or -1: after a
 * completed reactor_stop() (errno set to 0), or on failure (errno set). */
int reactor_review(struct Reactor* reactor);

/** Asks the reactor to stop. Async-signal-safe and callable from any thread: it only sets a
 * flag and wakes the owner. The next reactor_review() calls on_shutdown for every attached
 * fd, lets queued output drain (and lingering closes end, see sock_close; one whose peer has
 * acknowledged everything ends at once) for up to 5 seconds, closes every fd (on_close each), frees
 * the engine state and returns -1 with errno 0. An fd attached while the stop drains (a
 * connection handed over by another thread, a reactor_add in a callback) gets the same:
 * on_shutdown at the end of the review that attached it, then the drain and the close
 * (a sock_ fd already closing by then gets no on_shutdown: it is on its way out). */
void reactor_stop(struct Reactor* reactor);

/** Attaches fd (any pollable fd) to the reactor, edge-triggered for input, output and peer
 * half-close. Re-adding an attached fd re-arms it; an fd attached to another reactor that
 * this thread drives too leaves that one for this one. A plain fd (not open with the sock_
 * API) that no reactor holds is a new fd to other threads: a sock_close or sock_force_close
 * they made for its number before is dropped. Returns 0, or -1 with errno (EBADF for
 * a bad fd; EEXIST if a reactor that another thread drives holds it, or it is being handed
 * to one). */
int reactor_add(struct Reactor* reactor, int fd);

/** Detaches fd from the reactor without closing it; its sock_ state is kept, timers too: added
 * back (reactor_add, to this reactor or another), its idle time counts from the add, and its
 * own timeout (sock_set_timeout) and deadline go on; a deadline that passed meanwhile closes
 * it at that reactor's timer step.
 * Returns 0, or -1 with errno (EBADF if fd is not attached to this reactor). */
int reactor_remove(struct Reactor* reactor, int fd);

/** Closes fd now: detaches it, drops anything queued, close(2), then on_close. A no-op for
 * an fd that is not attached to this reactor. */
void reactor_close(struct Reactor* reactor, int fd);

/** Extension: the limits that keep a reactor's time and memory bounded. */
struct ReactorLimits {
  /** Close a connection after this long without reading or writing progress; 0: never (the
   * default of a plain reactor; the sharded server's default is 30 s). Progress includes the
   * peer taking bytes out of the kernel's send buffer (TCP: data the kernel sent once the
   * peer's window opened, and the peer's ACKs), so a slow reader of a large response is kept
   * while it reads. A change reaches an open connection when its armed timer next fires,
   * or when reactor_add brings it back (one opened while this was 0 has none otherwise);
   * sock_set_timeout() overrides it per connection. */
  unsigned idle_timeout_ms;
  /** Per connection: above this many queued bytes the reactor stops reading it (sock_read
   * returns 0, on_data is not called) until its queue drains to low_watermark; then on_data
   * resumes and on_ready says it may write again. Defaults: 1 MiB and 256 KiB. */
  size_t high_watermark;
  size_t low_watermark;
  /** Most bytes of packets the reactor's pool may have out (0: no bound), in whole packets
   * (sizeof(struct Packet)), rounded down, and one packet at least. A write that would need
   * more fails with ENOBUFS and queues nothing; one posted from another thread (which was
   * told 0 already) fails its connection instead. */
  size_t memory_budget;
};

/** Sets the reactor's limits. memory_budget applies at once; the watermarks to every
 * connection without its own at its next write or flush; idle_timeout_ms as its comment says.
 * Owner thread, or before the reactor runs. Returns 0, or -1 with errno EINVAL (NULL, or a
 * low watermark above the high one, or above the default high one when high is 0). */
int reactor_set_limits(struct Reactor* reactor, const struct ReactorLimits* limits);

/** Creates a timer fd (timerfd, non-blocking, close-on-exec). Returns it, or -1 with errno. */
int reactor_make_timer(void);

/** Arms timer fd to fire every `milliseconds` and attaches it: on_data runs each period;
 * call reactor_reset_timer() there. Returns 0, or -1 with errno. */
int reactor_add_timer(struct Reactor* reactor, int fd, long milliseconds);

/** Consumes a timer fd's expirations so the next period triggers again. */
void reactor_reset_timer(int fd);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LIBREACT_H */
