/* libsock: non-blocking sockets with a user-level write queue, the seed's API kept by name
 * and meaning (the seed's bugs are not kept: see docs/architecture.md).
 *
 * Errors: -1 and errno. EAGAIN is not an error: sock_read() returns 0 when no data is ready
 *   yet, and writes queue what the kernel cannot take. A negative, out-of-range or closed fd,
 *   or one never opened with the sock_ API, gives -1 with errno EBADF (void functions do
 *   nothing). NULL buffers with a non-zero length give EINVAL; zero lengths are no-ops that
 *   succeed (each function says what it returns).
 * Ownership: a `.move` buffer (malloc'd) and a `.file` FILE* belong to the library as soon as
 *   sock_write2() is called, even on error: they are freed / fclose'd by it. Packets checked
 *   out with sock_checkout_packet() belong to the caller until sock_send_packet() succeeds;
 *   on error the caller keeps them. Packets are carved from pooled slabs: release an unsent
 *   packet with sock_free_packet(), never with free() (the seed allowed free(); a per-packet
 *   malloc cannot meet the pool's memory bound).
 * Threads: an fd belongs to the reactor it is attached to, and so to that reactor's owner
 *   thread (libreact.h: the thread that drives it with reactor_review(), or the shard's thread
 *   on a sharded server); callbacks run there. Whichever drives the reactor, any thread may
 *   call sock_write/sock_write2, sock_flush, sock_close, sock_force_close, sock_send_packet,
 *   the handle calls, and sock_accept/sock_connect/sock_open/sock_attach with that reactor:
 *   off the owner thread they are posted to it, stamped with the fd's generation, and return
 *   0 once queued, -1 with ENOMEM if they cannot be (the result of the work itself is not
 *   reported back; a call that finds the connection closed when it runs is dropped, and what
 *   it owned is freed; a posted write that the owner cannot queue, for any reason (its memory
 *   budget spent, no memory, a FILE* that is not a regular file), fails the connection,
 *   SOCK_CLOSE_ERROR, rather than leave a gap in the stream), and the reactor wakes from its
 *   wait to run them. sock_close and sock_force_close return nothing: one that cannot be
 *   posted is lost (sock_close_uuid and sock_force_close_uuid say so). A posted open
 *   (sock_accept, sock_connect, sock_open) takes effect when the owner runs it: until then
 *   the new fd's calls fail with EBADF, so use it from the owner's callbacks (a sharded
 *   server's on_open). sock_read, sock_clear, the per-connection settings (sock_set_timeout,
 *   sock_set_deadline, sock_set_watermarks, sock_pending), sock_close_lingering and the
 *   sock_tlc_ calls need the owner thread: elsewhere they fail with EPERM (sock_clear does
 *   nothing). sock_status, sock_fd2uuid and sock_uuid2fd only read the fd's generation: any
 *   thread. An fd opened without a reactor has no owner thread: use it from one thread at a
 *   time. The helpers in the first section (no fd state), sock_checkout_packet() and
 *   sock_free_packet() are safe from any thread. No call may be posted to a reactor whose
 *   stop has completed, nor race with its final reactor_review().
 * Order: the calls one thread makes run in the order it makes them. The owner runs posted
 *   calls once per loop iteration, after its wait for events (up to 1,024, the rest in the
 *   next iterations), so a call posted from another thread is ordered before the owner
 *   thread's own calls only once it has run, however long ago it was made: a worker's write
 *   followed by a sock_close on the owner thread may meet the close first and be dropped. To
 *   close behind a worker's writes, close from that worker (its sock_close or
 *   sock_close_uuid is posted behind them).
 * Handles: an fd number is reused as soon as it closes. sock_fd2uuid() gives a handle (fd plus
 *   generation) that stops matching when that connection closes, for callers that keep
 *   connections across callbacks or threads.
 */
#ifndef LIBSOCK_H
#define LIBSOCK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "libreact.h"

#ifdef __cplusplus
extern "C" {
#endif

/* These declarations are what the shared library exports: tools/install builds everything
 * else with hidden visibility (docs/install.md). */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define LIBSOCK_VERSION "2.0.0"

/** Bytes of pre-allocated memory in each packet: a 16 KB payload chunk plus 1 KB of headroom
 * for a transport layer's framing, so one packet can carry one TLS record. Overridable at
 * build time for the whole program, library included: struct Packet's size depends on it, so
 * an installed libsock.h pins the value its library was built with (tools/install). */
#ifndef BUFFER_PACKET_SIZE
#define BUFFER_PACKET_SIZE (1024 * 17)
#endif
/** Chunk size used when data must be cut into records (transport layers, file reads); pinned
 * alike once installed. */
#ifndef BUFFER_FILE_READ_SIZE
#define BUFFER_FILE_READ_SIZE (1024 * 16)
#endif

/* ---------------------------------------------------------------------------------------
 * General helpers (no fd state; any thread)
 */

/** Sets O_NONBLOCK on fd. Returns 0, or -1 with errno. */
int sock_set_non_block(int fd);

/** Raises the soft RLIMIT_NOFILE to the hard limit and returns the number of fds the
 * process may hold. Returns -1 with errno if the limit cannot be read. */
ssize_t sock_max_capacity(void);

/** Opens a listening TCP socket: non-blocking, close-on-exec, SO_REUSEADDR, backlog
 * SOMAXCONN. address: numeric IPv4/IPv6 or host name; NULL listens on every address (IPv6
 * with IPv4-mapped when available). port: a number or service name; "0" picks a free port
 * (read it back with getsockname). Returns the fd, or -1 with errno (EINVAL for a NULL
 * port; for a name that does not resolve, EADDRNOTAVAIL). */
int sock_listen(const char* address, const char* port);

/* ---------------------------------------------------------------------------------------
 * The socket state. Optional: the table grows in pages on demand.
 */

/** Prepares the fd table for fds below max_fd (the seed's up-front allocation is not
 * needed: pages are allocated on first use). Returns 0, or -1 with errno EINVAL if max_fd
 * exceeds what the table can index. */
int8_t init_socklib(size_t max_fd);

/* ---------------------------------------------------------------------------------------
 * Accepting connections and opening sockets
 */

/** Accepts one pending connection on server_fd (non-blocking, close-on-exec, TCP_NODELAY)
 * and opens it for the sock_ API, attached to owner when owner is not NULL. A server_fd that
 * a reactor watches (reactor_add) is made non-blocking if it is not, so that the call never
 * holds the reactor's thread (setting it back to blocking later is unsupported); one that no
 * reactor watches keeps its mode, and a blocking one waits for a connection. Returns the new
 * fd, or -1 with errno (EAGAIN: nothing pending; accept until then, the reactor is
 * edge-triggered). */
int sock_accept(struct Reactor* owner, int server_fd);

/** Starts a non-blocking TCP connection to address:port and opens it for the sock_ API,
 * attached to owner when not NULL. The reactor calls on_ready once connected, or on_close if
 * the connection fails. Writes made before that are queued (from owner's thread: on another,
 * the open itself is posted first, see "Threads" above). The name is resolved with
 * getaddrinfo (blocking for DNS names: pass numeric addresses on a reactor thread). Its
 * addresses are tried in order only while a connect fails at once; a refusal that comes
 * later (the usual kind, even on loopback) closes the fd without trying the next one:
 * "localhost" may mean ::1 first, so pass the numeric address of the family served.
 * Returns the fd, or -1 with errno when the connection fails at once. */
int sock_connect(struct Reactor* owner, const char* address, const char* port);

/** Opens an existing fd for the sock_ API (empty queue, no transport layers) and attaches
 * it to owner when owner is not NULL. A blocking fd is made non-blocking (O_NONBLOCK), even
 * if the open then fails: sendfile, unlike the reads and writes, has no per-call flag that
 * keeps it from blocking the reactor's thread, so setting the fd back to blocking while it is
 * open (through a dup, or another process sharing the file) is unsupported. State left from
 * an earlier connection on the same fd number is released first. Returns 0, or -1 with errno
 * (EEXIST: the number is still held by a reactor that another thread drives, see
 * sock_clear; called off owner's thread, by any reactor other than owner). */
int sock_open(struct Reactor* owner, int fd);

/** Attaches an fd already opened with sock_open(NULL, fd) to owner: owner's idle timeout
 * applies from now (a connection moved from another reactor leaves its own timeout and
 * deadline behind; reactor_add keeps them). Returns 0, or -1 with
 * errno (EBADF if fd is not open; EEXIST if a reactor that another thread drives holds it,
 * EBUSY when called off owner's thread for an fd that a reactor holds). */
int sock_attach(struct Reactor* owner, int fd);

/** Releases fd's sock_ state (queue, transport layers, buffered input) without closing it
 * and without touching its reactor registration. For fds closed outside the sock_ API.
 * Hazard: an fd attached to a reactor stays that reactor's until reactor_remove() (on its
 * thread) or its stop; closed with close(2) while attached, its number, once the kernel
 * reuses it, cannot be opened or attached on a reactor that another thread drives (EEXIST).
 * Close attached fds with sock_close/sock_force_close/reactor_close instead. */
void sock_clear(int fd);

/** Returns fcntl(fd, F_GETFL) for an open fd, or -1 (errno EBADF) if it is closed or not
 * opened with the sock_ API. */
int sock_status(int fd);

#define sock_is_closed(fd) (sock_status((fd)) < 0)

/* ---------------------------------------------------------------------------------------
 * Reading and writing
 */

/** Reads up to count bytes, like read(2), after the transport layers (TLC) unwrapped them;
 * plaintext that does not fit is kept for the next call.
 * Returns the number of bytes read (> 0); 0 when no data is ready yet (EAGAIN, or count is
 * 0); -1 with errno 0 when the peer finished sending (EOF); -1 with errno on an error
 * (EINVAL for a NULL buf). After EOF or an error the connection closes once its queued
 * output is sent (EOF) or at once (error). */
ssize_t sock_read(int fd, void* buf, size_t count);

/** Options of sock_write2(), named-argument style. In C++ the designators must follow the
 * declaration order (fd, buffer, length, move, urgent, file, merge, uuid). */
struct SockWriteOpt {
  /** The fd to send to. */
  int fd SOCK_CXX_ZERO_;
  /** The data, or a FILE* when .file is set. */
  const void* buffer SOCK_CXX_ZERO_;
  /** Bytes in buffer. For .file: bytes to send from the file's current offset, 0 meaning up
   * to its end; a file that holds fewer when they are sent fails the connection (EIO) rather
   * than end the stream short. */
  size_t length SOCK_CXX_ZERO_;
  /** The library takes ownership of buffer (allocated with malloc) and frees it once sent or
   * on error; no copy is made. */
  unsigned move : 1 SOCK_CXX_ZERO_;
  /** Send before queued data at the next packet boundary: before the first queued packet
   * that starts a write (never inside a partly sent packet). Urgent writes stay in order
   * among themselves. */
  unsigned urgent : 1 SOCK_CXX_ZERO_;
  /** buffer is a FILE*: its bytes from the current offset are streamed with sendfile, and
   * the FILE* is fclose'd when done or on error (ownership passes as with .move). */
  unsigned file : 1 SOCK_CXX_ZERO_;
  /** Reserved, as in the seed: small writes are always merged into the queue's last packet. */
  unsigned merge : 1 SOCK_CXX_ZERO_;
  /** Extension: a handle from sock_fd2uuid() to write to instead of .fd. The write fails with
   * EBADF if that connection is closed, and is dropped if it closes before the write runs on
   * its owner thread, so the bytes never reach a later connection on the same fd number. */
  intptr_t uuid SOCK_CXX_ZERO_;
};

/** Queues data for fd (copying it, unless .move or .file), to be written when the reactor
 * flushes (after the current callback batch) or at once for an fd without a reactor.
 * (Under a memory budget the shortcut is taken only when the whole write could be queued,
 * so ENOBUFS still means nothing was sent. If a write's start went to the kernel and its
 * rest cannot be queued for lack of memory, ENOMEM, the connection fails and closes: the
 * stream would otherwise be cut.)
 * One shortcut: the first copy written to an attached fd with an empty queue in a loop
 * iteration is offered to the kernel at once (one send, no packet, no copy), and only what
 * the kernel did not take is queued; later writes in the same iteration queue and leave
 * together in one writev at the flush. So build a reply in one buffer to send it in one
 * syscall. Not with transport layers, while connecting, or while the kernel refuses.
 * Returns 0 when everything was queued (as the seed did), or -1 with errno: EBADF (closed
 * fd), EINVAL (NULL buffer with a length; for .file, not a regular file, or a .length past
 * what a file offset can reach), ENOMEM, ENOBUFS (the reactor's memory budget is
 * spent: nothing was queued, see struct ReactorLimits), EPIPE (the connection is closing or
 * failed). For an fd without a reactor, whose queue is sent within the call, also the error
 * of that send (EPIPE, ECONNRESET, ...): the fd then stays open, failed (writes get EPIPE),
 * until the caller closes it with sock_close, sock_force_close or sock_flush (which reports
 * the error again). sock_send_packet, which returns 0 once its chain is queued, leaves such
 * a failure to those calls. */
ssize_t sock_write2_fn(struct SockWriteOpt options);

#ifdef __cplusplus
#define sock_write2(...) sock_write2_fn(SockWriteOpt{__VA_ARGS__})
#else
#define sock_write2(...) sock_write2_fn((struct SockWriteOpt){__VA_ARGS__})
#endif

/** Copies count bytes from buf to fd's queue. Same results as sock_write2(). */
#define sock_write(sockfd, buf, count) \
  sock_write2(.fd = (sockfd), .buffer = (buf), .length = (count))

/** Writes fd's queue to the kernel with writev/sendfile until it is empty or the kernel says
 * EAGAIN, then closes fd if it was marked by sock_close() and everything was sent. An
 * on_ready this owes (a pause that ended, a queue the kernel had refused that drained) is
 * not run inside the call: the reactor's next flush step runs it, or, if the kernel refuses
 * what was written since, the flush that drains the queue.
 * Returns the number of bytes written (0 if none could be), or -1 with errno when fd is
 * closed or the write failed (the connection is then closed). */
ssize_t sock_flush(int fd);

/** Closes fd once everything queued is sent (no new writes are accepted meanwhile). The
 * close runs on_close of fd's reactor, or of `reactor` when fd has none.
 * If the peer's input waits unread by then, close(2) would send a reset, which destroys what
 * the kernel has not delivered yet; so on an fd attached to a reactor the close lingers
 * instead: the write side is shut (the peer
 * reads everything sent, then EOF), on_data no longer runs, input is read and discarded, and
 * fd closes at the peer's EOF, once the peer has been quiet for 5 s (sending nothing, taking
 * nothing), or 30 s after the queue drained (SOCK_CLOSE_LOCAL; SOCK_CLOSE_ERROR if the peer
 * resets). To abandon a stream the peer is still sending, sock_force_close(): its reset is
 * what stops the sender. */
void sock_close(struct Reactor* reactor, int fd);

/** sock_close() for a peer that may still be sending, such as one whose request was answered
 * with an error before its upload ended: fd lingers as above once its queue is sent, whether
 * or not input waits at that moment, so input that comes later cannot turn the close
 * into a reset either. Owner thread; fd attached to a reactor. Returns 0, or -1 with errno (EBADF:
 * not open; EPERM: another thread; EINVAL: no reactor) and fd untouched. Without memory to
 * note the linger, fd closes as sock_close() closes it. */
int sock_close_lingering(struct Reactor* reactor, int fd);

/** Closes fd now, dropping its queue. Bytes the kernel already took (such as a first write
 * that went straight to it, see sock_write2) are not recalled. The close runs on_close as
 * sock_close() does. */
void sock_force_close(struct Reactor* reactor, int fd);

/** A handle for fd's current connection: its generation above the fd number, never negative.
 * Returns -1 with errno EBADF if fd is not open. Any thread. */
intptr_t sock_fd2uuid(int fd);

/** The fd of a handle while its connection is open, else -1 with errno EBADF. Any thread. */
int sock_uuid2fd(intptr_t uuid);

/** sock_close() / sock_force_close() through a handle: -1 with errno EBADF if its connection is
 * already closed (a later connection on the same number is never touched), or ENOMEM if the
 * call could not be posted to the owner thread; else 0. */
int sock_close_uuid(intptr_t uuid);
int sock_force_close_uuid(intptr_t uuid);

/** Closes fd after idle_ms without a read or a write that made progress (0: never; the peer
 * taking queued bytes from the kernel counts, see ReactorLimits.idle_timeout_ms, and so do
 * bytes received that a transport layer keeps until it can unwrap them). The
 * default comes from the reactor's limits (struct ReactorLimits). Owner thread; fd must be
 * attached to a reactor. Returns 0, or -1 with errno (EBADF, EINVAL without a reactor,
 * ENOMEM: the per-connection settings are allocated on first use). */
int sock_set_timeout(int fd, unsigned idle_ms);

/** Closes fd ms from now whatever it does (0 clears): for protocols' "whole request within T"
 * (slowloris). Owner thread, attached fd. Returns 0, or -1 with errno (EBADF, EINVAL,
 * ENOMEM). Neither call closes fd itself: one whose other timer has already expired closes
 * at the reactor's timer step (on_close after the call returns, SOCK_CLOSE_TIMEOUT). */
int sock_set_deadline(int fd, unsigned ms);

/** fd's watermarks (0, 0: the reactor's): above `high` queued bytes reading pauses, at or
 * below `low` (0: once the queue is empty) it resumes and on_ready runs. Owner thread.
 * Returns 0, or -1 with errno (EINVAL if low > high or high > UINT32_MAX, ENOMEM). */
int sock_set_watermarks(int fd, size_t high, size_t low);

/** Bytes queued for fd and not yet written (file bytes included). Owner thread; -1 with
 * errno EBADF for a closed fd. */
ssize_t sock_pending(int fd);

/** Why a connection closed. */
enum SockCloseReason {
  SOCK_CLOSE_LOCAL = 0,   /* sock_close, sock_force_close, reactor_close, a stop */
  SOCK_CLOSE_PEER = 1,    /* the peer closed (EOF, hang-up) */
  SOCK_CLOSE_TIMEOUT = 2, /* an idle timeout or a deadline expired; with bytes still owed to
                           * a TCP peer (queued, or unacknowledged in the kernel) the close
                           * is a reset, so the peer cannot take a cut-short stream for whole */
  SOCK_CLOSE_ERROR = 3    /* a read, write, connect or transport-layer error */
};

/** Inside on_close, and in the transport layers' on_clear that follows it: why that fd
 * closed. Elsewhere: SOCK_CLOSE_LOCAL. */
enum SockCloseReason sock_close_reason(void);

/* ---------------------------------------------------------------------------------------
 * Direct user-level buffer API
 */

/** A buffer packet: checkout, fill internal_memory (or point buffer elsewhere), send. */
struct Packet {
  /** Bytes of data at buffer. */
  ssize_t length;
  /** The data: internal_memory, a malloc'd buffer (metadata.external) or a FILE*
   * (metadata.is_file). */
  void* buffer;
  /** Pre-allocated memory. */
  char internal_memory[BUFFER_PACKET_SIZE];
  struct PacketMetadata {
    /** The next packet of a chain (sent, and freed, with this one). */
    struct Packet* next;
    /** Set by the library on the first packet of each write: urgent data may be inserted
     * before it without breaking a message. */
    unsigned can_interrupt : 1;
    /** buffer is a FILE*, streamed from its current offset to its end, then fclose'd. */
    unsigned is_file : 1;
    /** buffer was allocated with malloc and is freed with the packet. */
    unsigned external : 1;
    /** Insert this chain before the first interruptible packet instead of at the end. */
    unsigned urgent : 1;
    /** Used by the library while the packet is queued (transport-layer state). */
    unsigned rsrv : 4;
    /** Used by the library (the profiler's checkout time). It fills what was padding, so
     * the struct's size and layout are those of the versions without it. */
    uint32_t rsrv_time;
  } metadata;
};

/** Checks a packet out of the pool of the calling thread's reactor (or of a process-wide
 * pool on a thread without one): buffer = internal_memory, length 0, metadata cleared.
 * Returns NULL (errno ENOMEM) when memory ran out. Any thread. */
struct Packet* sock_checkout_packet(void);

/** Queues a packet chain for fd (each packet's length bytes at buffer) and flushes.
 * Returns 0 and takes ownership of the chain; or -1 with errno (EBADF; EINVAL for NULL, a
 * negative length, a buffer inside internal_memory whose length runs past its end, a file
 * packet without its FILE*; EPIPE if the connection is closing) and the caller keeps the
 * chain. */
ssize_t sock_send_packet(int fd, struct Packet* packet);

/** Frees a packet chain: fclose's file packets, frees external buffers and returns the
 * packets to their pool (from any thread). NULL is a no-op. */
void sock_free_packet(struct Packet* packet);

/* ---------------------------------------------------------------------------------------
 * Transport Layer Callbacks (TLC): a chain of layers between the sock_ API and the socket
 * (framing, compression, TLS). The chain's head is the highest layer (closest to the
 * application); `next` is the layer below it.
 *
 * Writing: writes are cut into records of at most BUFFER_FILE_READ_SIZE bytes (small writes
 * share one record), and each record is wrapped just before it is first sent, from the head
 * layer down, in place: a layer may grow the packet into the BUFFER_PACKET_SIZE -
 * BUFFER_FILE_READ_SIZE bytes of headroom. Records are therefore wrapped in wire order, which
 * stateful layers (TLS sequence numbers) need, whatever urgent writes do to the queue. .move
 * buffers are copied and freed at once; .file data is read in records (pread) as the socket
 * drains, since the layers need the bytes in memory (sendfile is used only without layers).
 * Reading: recv'd bytes are unwrapped from the lowest layer up, in place, in a buffer of
 * max_len bytes; a layer writes its output over its input and sets *len (0 if it needs more
 * input; it then keeps the partial input itself). A layer that holds more output than
 * max_len returns max_len bytes and is called again with *len == 0 until it yields nothing;
 * a layer returns all the output it has up to max_len (after a short recv whose layers
 * returned less, sock_read() waits for the socket's next readiness before it calls them).
 * A layer may change the chain from inside its unwrap (a PROXY header read, a protocol
 * recognised): the output of that call goes on to the layers above it after sock_tlc_add
 * (those pushed included), or to the new chain from its lowest layer after sock_tlc_set (to
 * the reader if the chain is now empty). sock_tlc_set runs on_clear for the calling layer
 * too: it must not touch its state afterwards.
 * wrap must not close fd (sock_close, sock_force_close) or change the chain (sock_tlc_add,
 * sock_tlc_set, sock_clear): it runs amid the queue being sent, which those free; to give up,
 * it returns -1 (debug builds abort on either).
 * wrap/unwrap return 0, or -1 to fail the connection (it is closed: SOCK_CLOSE_ERROR), or 1:
 * - wrap returning 1 holds the record (a TLS handshake is not done): the layers above it have
 *   wrapped it and will not again; it stays queued, counted in sock_pending(), with all that
 *   follows it, and nothing is sent from it on until the layer asks for a flush with
 *   sock_tlc_write(fd, layer, NULL, 0) and then wraps it (wrap runs again for it; a layer
 *   that holds must not change the packet).
 * - unwrap returning 1 ends the stream (a TLS close_notify): the socket is read no more, and
 *   sock_read() reports EOF once the layers' output is read (they are called with no input
 *   until they yield nothing, as after the peer's EOF), as if the peer had closed.
 */
struct sockTLC {
  /** The layer below this one (NULL for the lowest layer). */
  struct sockTLC* next;
  /** The layer's own state, passed to its callbacks. */
  void* udata;
  int (*wrap)(int fd, struct Packet* packet, void* udata);
  int (*unwrap)(int fd, void* buffer, ssize_t* len, const size_t max_len, void* udata);
  /** The fd's sock_ state is being released (close or sock_clear): free udata here. */
  void (*on_clear)(int fd, struct sockTLC* tlc);
  /* Extension (TLS needs it): called once when a graceful close is due and the queue is
   * empty, so a layer can queue its final record (a TLS close_notify) with sock_tlc_write()
   * before the fd closes; head first, each layer once the records queued by those above it
   * are sent (its own then follows them). May be NULL. */
  void (*before_close)(int fd, struct sockTLC* tlc);
};

/** Returns fd's layer chain (its head), or NULL. */
struct sockTLC* sock_tlc_get(int fd);

/** Replaces fd's chain (on_clear runs for every layer of the old chain). Returns 0, or -1
 * with errno EBADF (or ENOMEM). Set layers before any data flows: a write made before them
 * may already be on the wire (see sock_write2). */
int sock_tlc_set(int fd, struct sockTLC* tlc);

/** Pushes tlc on top of fd's chain (tlc->next is set to the old head). Returns 0, or -1 with
 * errno (EBADF; EINVAL for NULL or when the chain already has 7 layers, the most it may have;
 * ENOMEM). */
int sock_tlc_add(int fd, struct sockTLC* tlc);

/** Extension (TLS needs it): queues bytes a layer produces on its own (handshake records,
 * close_notify) as records wrapped only by the layers below `from`; NULL queues raw bytes.
 * They go in the layer's wire order: after every packet `from` has wrapped (or a layer below
 * it queued) and before the first it has not, so held and not yet wrapped writes follow them,
 * and urgent writes are never inserted before them; small records share a packet. Then an
 * attached fd is flushed at its reactor's next flush step (a length of 0 only asks for that
 * flush: a layer that held records calls it once it can wrap them); an fd without a reactor
 * waits for the caller's sock_flush().
 * Callable from inside wrap/unwrap/before_close. Returns 0, or -1 with errno (EINVAL if
 * `from` is not one of fd's layers, ENOMEM/ENOBUFS with nothing queued past the failure). */
int sock_tlc_write(int fd, struct sockTLC* from, const void* data, size_t length);

/* ---------------------------------------------------------------------------------------
 * Introspection
 */

/** Packet pool counters (one pool per reactor, plus one for threads without a reactor), and
 * the reactor's total of queued bytes. */
struct SockPoolStats {
  uint64_t checkouts;   /* packets handed out */
  uint64_t returns;     /* packets given back */
  uint64_t hits;        /* checkouts served from pooled memory */
  uint64_t misses;      /* checkouts that needed a new slab from jemalloc */
  uint64_t outstanding; /* checkouts - returns */
  uint64_t high_water;  /* most packets out at once */
  uint64_t slab_bytes;  /* memory the pool holds from jemalloc */
  uint64_t queued_bytes; /* bytes queued on the reactor's connections (0 for the NULL pool) */
};

/** Fills *stats with the counters of reactor's pool (NULL: the pool of threads without a
 * reactor). Any thread while the reactor lives (as sock_stats): exact on the owner thread, a
 * recent snapshot elsewhere. Returns 0, or -1 with errno EINVAL. */
int sock_pool_stats(struct Reactor* reactor, struct SockPoolStats* stats);

/** Bytes of jemalloc memory one packet really costs (slab size / packets per slab). */
size_t sock_packet_footprint(void);

/* ---------------------------------------------------------------------------------------
 * The packet pool profiler: counters always, histograms and the top connections by queued
 * memory while profiling is on, exported as Prometheus text or JSON (docs/profiling.md).
 */

/** Every always-on counter of one reactor. ABI-stable by size: the caller sets `size` to
 * sizeof(struct SockStats) as it was compiled; the library fills that many bytes at most
 * (fields are only ever appended) and sets `size` to the bytes it filled. */
struct SockStats {
  uint32_t size;
  uint32_t reserved_;      /* 0 */
  uint64_t checkouts;      /* packets checked out of the reactor's pool */
  uint64_t returns;        /* packets returned to it */
  uint64_t remote_returns; /* of those, returned by other threads */
  uint64_t hits;           /* checkouts served from memory the pool held */
  uint64_t misses;         /* checkouts that took a new chunk from jemalloc */
  uint64_t chunks_freed;   /* chunks given back to jemalloc */
  uint64_t refusals;       /* checkouts refused with ENOBUFS (the memory budget) */
  uint64_t alloc_failures; /* checkouts refused with ENOMEM */
  uint64_t outstanding;    /* packets out now: checkouts - returns */
  uint64_t high_water;     /* most packets out at once */
  uint64_t chunks;         /* chunks held, the spare included */
  uint64_t chunk_bytes;    /* their bytes */
  uint64_t packet_bytes;   /* what one packet really costs */
  uint64_t queued_bytes;   /* bytes queued on the reactor's connections */
  uint64_t connections;    /* fds attached to the reactor (listeners, timer fds included) */
  uint64_t writes_direct;  /* writes sent to the kernel at once */
  uint64_t writes_queued;  /* writes that queued */
  uint64_t writev_calls;   /* sendmsg calls of the flush step */
  uint64_t writev_packets; /* packets those calls gathered */
  uint64_t sendfile_calls;
  uint64_t trims;          /* times closed connections' timers were dropped and memory purged */
  /* The loop's iterations, and their work (from the wait's return to the iteration's end,
   * the wait excluded: callbacks, posted calls, flushes, timers), in microseconds in all and
   * the longest one's. A long iteration is a stall: every connection of the reactor waited. */
  uint64_t loop_iterations;
  uint64_t loop_busy_us;
  uint64_t loop_longest_busy_us;
};

/** Fills *stats (see struct SockStats for `size`) with reactor's counters. Any thread while
 * the reactor lives (not racing with its first use or its final reactor_review): exact on
 * the owner thread, a relaxed snapshot elsewhere (checkouts - returns may differ from
 * outstanding by the packets moving meanwhile). Returns 0, or -1 with errno EINVAL (NULL
 * arguments, a reactor that never ran, or a size below 8). */
int sock_stats(struct Reactor* reactor, struct SockStats* stats);

/** Switches the profiler's histograms and top-connections list on (1) or off (0) for every
 * reactor of the process; -1 only asks. Returns the state before the call. Any thread. The
 * environment variable LIBSOCK_PROFILE=1 switches it on at start. */
int sock_profile(int on);

enum SockMetricsFormat {
  SOCK_METRICS_PROMETHEUS = 0, /* text exposition format 0.0.4 */
  SOCK_METRICS_JSON = 1
};

/** Writes the metrics of reactors[0..count) (series labelled shard="i") into buf, like
 * snprintf: at most capacity bytes, NUL-terminated when capacity > 0, and returns the length
 * of the whole text (call again with a larger buffer when it is >= capacity). `prefix`
 * keeps only the Prometheus families whose names start with it (NULL or "": all). Any
 * thread; the reactors must stay alive meanwhile. -1 with errno EINVAL (a NULL array or a
 * NULL buf with capacity > 0, an unknown format) or ENOMEM. */
ssize_t sock_metrics(struct Reactor* const* reactors, size_t count, int format,
                     const char* prefix, char* buf, size_t capacity);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LIBSOCK_H */
