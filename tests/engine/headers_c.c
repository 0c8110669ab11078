/* The public headers used from strict C11 (-std=c11 -pedantic, no feature-test macros): every
 * function, macro, struct and field of libsock.h and libreact.h, and real round trips over a
 * socketpair and through a reactor. headers_test.cc runs headers_c_smoke().
 *
 * libsock.h comes first, so it must compile with nothing before it. (The other three
 * "included first" cases: libreact.h in C by seed_quick_example.c, libreact.h in C++ by
 * headers_test.cc, libsock.h in C++ by socket_ops_test.cc.) */
#include "engine/libsock.h"
#include "engine/libreact.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The constants keep the seed's values: 16 KB records plus 1 KB of headroom per packet. */
_Static_assert(BUFFER_PACKET_SIZE == 17 * 1024, "BUFFER_PACKET_SIZE is the seed's 17 KB");
_Static_assert(BUFFER_FILE_READ_SIZE == 16 * 1024, "BUFFER_FILE_READ_SIZE is the seed's 16 KB");
_Static_assert(sizeof(((struct Packet*)0)->internal_memory) == BUFFER_PACKET_SIZE,
               "a packet carries BUFFER_PACKET_SIZE bytes of its own memory");
_Static_assert(REACTOR_MAX_EVENTS > 0 && REACTOR_TICK > 0, "the reactor's limits are positive");

int headers_c_smoke(void);

/* Every function's address, each through a pointer of its declared type: a changed
 * prototype fails to compile (incompatible pointer types are errors under -Werror), and the
 * link proves each name is defined with C linkage. */
struct CApi {
  int (*set_non_block)(int);
  ssize_t (*max_capacity)(void);
  int (*listen)(const char*, const char*);
  int8_t (*init_socklib)(size_t);
  int (*accept)(struct Reactor*, int);
  int (*connect)(struct Reactor*, const char*, const char*);
  int (*open)(struct Reactor*, int);
  int (*attach)(struct Reactor*, int);
  void (*clear)(int);
  int (*status)(int);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*write2)(struct SockWriteOpt);
  ssize_t (*flush)(int);
  void (*close)(struct Reactor*, int);
  void (*force_close)(struct Reactor*, int);
  struct Packet* (*checkout_packet)(void);
  ssize_t (*send_packet)(int, struct Packet*);
  void (*free_packet)(struct Packet*);
  struct sockTLC* (*tlc_get)(int);
  int (*tlc_set)(int, struct sockTLC*);
  int (*tlc_add)(int, struct sockTLC*);
  int (*tlc_write)(int, struct sockTLC*, const void*, size_t);
  int (*pool_stats)(struct Reactor*, struct SockPoolStats*);
  size_t (*packet_footprint)(void);
  int (*reactor_init)(struct Reactor*);
  int (*reactor_review)(struct Reactor*);
  void (*reactor_stop)(struct Reactor*);
  int (*reactor_add)(struct Reactor*, int);
  int (*reactor_remove)(struct Reactor*, int);
  void (*reactor_close)(struct Reactor*, int);
  int (*reactor_make_timer)(void);
  int (*reactor_add_timer)(struct Reactor*, int, long);
  void (*reactor_reset_timer)(int);
};

static const struct CApi kApi = {
    .set_non_block = sock_set_non_block,
    .max_capacity = sock_max_capacity,
    .listen = sock_listen,
    .init_socklib = init_socklib,
    .accept = sock_accept,
    .connect = sock_connect,
    .open = sock_open,
    .attach = sock_attach,
    .clear = sock_clear,
    .status = sock_status,
    .read = sock_read,
    .write2 = sock_write2_fn,
    .flush = sock_flush,
    .close = sock_close,
    .force_close = sock_force_close,
    .checkout_packet = sock_checkout_packet,
    .send_packet = sock_send_packet,
    .free_packet = sock_free_packet,
    .tlc_get = sock_tlc_get,
    .tlc_set = sock_tlc_set,
    .tlc_add = sock_tlc_add,
    .tlc_write = sock_tlc_write,
    .pool_stats = sock_pool_stats,
    .packet_footprint = sock_packet_footprint,
    .reactor_init = reactor_init,
    .reactor_review = reactor_review,
    .reactor_stop = reactor_stop,
    .reactor_add = reactor_add,
    .reactor_remove = reactor_remove,
    .reactor_close = reactor_close,
    .reactor_make_timer = reactor_make_timer,
    .reactor_add_timer = reactor_add_timer,
    .reactor_reset_timer = reactor_reset_timer,
};

/* Every step below returns its line number on failure, so the C++ test names the step. */
#define CHECK(cond)               \
  do {                            \
    if (!(cond)) return __LINE__; \
  } while (0)

/* Reads exactly `want` bytes that are already in fd's receive queue (all writes here go to
 * the kernel at once: the fds have no reactor), so a 0 ("no data yet") is a failure. */
static int read_exactly(int fd, char* out, size_t want) {
  size_t got = 0;
  while (got < want) {
    const ssize_t n = sock_read(fd, out + got, want - got);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  return 0;
}

/* A transport layer that XORs every byte with its udata's key, both ways. */
struct XorLayer {
  unsigned char key;
  int clears;
  int before_closes;
};

static int xor_wrap(int fd, struct Packet* packet, void* udata) {
  const struct XorLayer* layer = udata;
  unsigned char* bytes = packet->buffer;
  ssize_t i;
  (void)fd;
  for (i = 0; i < packet->length; ++i) bytes[i] ^= layer->key;
  return 0;
}

static int xor_unwrap(int fd, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  const struct XorLayer* layer = udata;
  unsigned char* bytes = buffer;
  ssize_t i;
  (void)fd;
  if ((size_t)*len > max_len) return -1;
  for (i = 0; i < *len; ++i) bytes[i] ^= layer->key;
  return 0;
}

static void xor_on_clear(int fd, struct sockTLC* tlc) {
  struct XorLayer* layer = tlc->udata;
  (void)fd;
  ++layer->clears;
}

/* The graceful close's last record: raw bytes from below this (lowest) layer. */
static void xor_before_close(int fd, struct sockTLC* tlc) {
  struct XorLayer* layer = tlc->udata;
  ++layer->before_closes;
  sock_tlc_write(fd, tlc, "bye", 3);
}

/* sock_write, sock_write2 (.move, .urgent, .merge, .file), sock_write2_fn with a named
 * struct SockWriteOpt and a packet chain (memory, external, file), from a sock_open(NULL) fd
 * to its socketpair peer; then a transport layer and a graceful close. */
static int socketpair_round_trip(void) {
  static const char kExpected[] = "hello moved urgent merged named file packet+external+file";
  char got[sizeof kExpected];
  int sv[2];
  char* moved;
  FILE* file;
  struct SockWriteOpt named = {0};
  struct Packet* first;
  struct Packet* second;
  struct Packet* third;
  struct Packet* unsent;
  struct XorLayer tx_state = {0x5a, 0, 0};
  struct XorLayer rx_state = {0x5a, 0, 0};
  struct sockTLC tx = {.next = NULL,
                       .udata = &tx_state,
                       .wrap = xor_wrap,
                       .unwrap = xor_unwrap,
                       .on_clear = xor_on_clear,
                       .before_close = xor_before_close};
  struct sockTLC rx = {NULL, &rx_state, xor_wrap, xor_unwrap, xor_on_clear, NULL};
  struct SockPoolStats stats;

  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  CHECK(sock_set_non_block(sv[1]) == 0);
  CHECK(sock_open(NULL, sv[0]) == 0);
  CHECK(sock_open(NULL, sv[1]) == 0);
  CHECK(!sock_is_closed(sv[0]));
  CHECK(sock_status(sv[1]) >= 0 && (sock_status(sv[1]) & O_NONBLOCK));
  CHECK(sock_read(sv[1], got, sizeof got) == 0); /* nothing sent yet: 0, not an error */

  CHECK(sock_write(sv[0], "hello ", 6) == 0);
  moved = malloc(6);
  CHECK(moved != NULL);
  memcpy(moved, "moved ", 6);
  /* C takes designators in any order. */
  CHECK(sock_write2(.length = 6, .move = 1, .buffer = moved, .fd = sv[0]) == 0);
  CHECK(sock_write2(.urgent = 1, .buffer = "urgent ", .fd = sv[0], .length = 7) == 0);
  CHECK(sock_write2(.merge = 1, .length = 7, .fd = sv[0], .buffer = "merged ") == 0);
  named.fd = sv[0];
  named.buffer = "named ";
  named.length = 6;
  CHECK(sock_write2_fn(named) == 0);
  file = tmpfile();
  CHECK(file != NULL);
  CHECK(fputs("file ", file) >= 0);
  rewind(file); /* .file sends from the current offset; length 0 means to the end */
  CHECK(sock_write2(.file = 1, .buffer = file, .fd = sv[0]) == 0);

  first = sock_checkout_packet();
  second = sock_checkout_packet();
  third = sock_checkout_packet();
  unsent = sock_checkout_packet();
  CHECK(first && second && third && unsent);
  CHECK(first->buffer == first->internal_memory && first->length == 0);
  CHECK(!first->metadata.next && !first->metadata.can_interrupt && !first->metadata.is_file &&
        !first->metadata.external && !first->metadata.urgent);
  memcpy(first->internal_memory, "packet", 6);
  first->length = 6;
  first->metadata.next = second;
  second->buffer = malloc(9);
  CHECK(second->buffer != NULL);
  memcpy(second->buffer, "+external", 9);
  second->length = 9;
  second->metadata.external = 1; /* freed by the library with the packet */
  second->metadata.next = third;
  third->buffer = tmpfile();
  CHECK(third->buffer != NULL);
  CHECK(fputs("+file", third->buffer) >= 0);
  rewind(third->buffer);
  third->metadata.is_file = 1; /* streamed to its end, then fclose'd by the library */
  CHECK(sock_send_packet(sv[0], first) == 0);
  sock_free_packet(unsent);
  CHECK(sock_flush(sv[0]) == 0); /* everything already went out */

  CHECK(read_exactly(sv[1], got, sizeof kExpected - 1) == 0);
  CHECK(memcmp(got, kExpected, sizeof kExpected - 1) == 0);
  CHECK(sock_pool_stats(NULL, &stats) == 0);
  CHECK(stats.checkouts >= 4 && stats.returns <= stats.checkouts &&
        stats.outstanding == stats.checkouts - stats.returns &&
        stats.high_water >= stats.outstanding && stats.hits + stats.misses == stats.checkouts &&
        stats.slab_bytes > 0);
  CHECK(sock_packet_footprint() >= sizeof(struct Packet));

  /* A layer on each side: the bytes cross the socket XOR'd and arrive as written. */
  CHECK(sock_tlc_add(sv[0], &tx) == 0);
  CHECK(sock_tlc_set(sv[1], &rx) == 0);
  CHECK(sock_tlc_get(sv[0]) == &tx && tx.next == NULL);
  CHECK(sock_write(sv[0], "layered", 7) == 0);
  CHECK(read_exactly(sv[1], got, 7) == 0);
  CHECK(memcmp(got, "layered", 7) == 0);
  /* Raw bytes (from below the lowest layer) skip the writer's layer: the reader's layer
   * turns them into zeros. */
  CHECK(sock_tlc_write(sv[0], NULL, "\x5a\x5a", 2) == 0);
  CHECK(sock_flush(sv[0]) == 2); /* sock_tlc_write only queues */
  CHECK(read_exactly(sv[1], got, 2) == 0);
  CHECK(got[0] == 0 && got[1] == 0);
  CHECK(sock_tlc_set(sv[1], NULL) == 0 && rx_state.clears == 1);
  /* And the writer's layer did XOR: the reader, now without one, sees the wire bytes. */
  CHECK(sock_write(sv[0], "\x5a", 1) == 0);
  CHECK(read_exactly(sv[1], got, 1) == 0 && got[0] == 0);

  /* Graceful close: before_close queues "bye", it is sent, then the fd closes. */
  sock_close(NULL, sv[0]);
  CHECK(sock_is_closed(sv[0]));
  CHECK(tx_state.before_closes == 1 && tx_state.clears == 1);
  CHECK(read_exactly(sv[1], got, 3) == 0);
  CHECK(memcmp(got, "bye", 3) == 0);
  errno = EINVAL;
  CHECK(sock_read(sv[1], got, sizeof got) == -1 && errno == 0); /* EOF */
  sock_force_close(NULL, sv[1]);
  CHECK(sock_is_closed(sv[1]));
  return 0;
}

static int g_timer_fd = -1;
static int g_timer_ticks;
static int g_shutdowns;
static int g_closes;

static void on_data(struct Reactor* reactor, int fd) {
  (void)reactor;
  if (fd == g_timer_fd) {
    reactor_reset_timer(fd);
    ++g_timer_ticks;
  }
}

static void on_shutdown(struct Reactor* reactor, int fd) {
  (void)reactor;
  (void)fd;
  ++g_shutdowns;
}

static void on_close(struct Reactor* reactor, int fd) {
  (void)reactor;
  (void)fd;
  ++g_closes;
}

/* A reactor from C: fields, timer, attach/detach, reactor_close, stop. */
static int reactor_round_trip(void) {
  struct Reactor r = {.on_data = on_data, .on_shutdown = on_shutdown, .on_close = on_close};
  struct SockPoolStats stats;
  int sv[2];
  int i;
  int review;

  CHECK(r.on_ready == NULL && r.maxfd == 0 && r.last_tick == 0 && r._impl == NULL);
  CHECK(reactor_init(&r) == 0 && r._impl != NULL && r.last_tick != 0);
  g_timer_fd = reactor_make_timer();
  CHECK(g_timer_fd >= 0);
  CHECK(reactor_add_timer(&r, g_timer_fd, 1) == 0);
  for (i = 0; i < 1000 && g_timer_ticks == 0; ++i) CHECK(reactor_review(&r) >= 0);
  CHECK(g_timer_ticks > 0);
  CHECK(reactor_remove(&r, g_timer_fd) == 0);
  CHECK(reactor_remove(&r, g_timer_fd) == -1 && errno == EBADF);
  CHECK(reactor_add(&r, g_timer_fd) == 0);

  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  CHECK(sock_open(&r, sv[0]) == 0);
  reactor_close(&r, sv[0]); /* closes now: on_close once */
  CHECK(g_closes == 1 && sock_is_closed(sv[0]));
  CHECK(sock_open(NULL, sv[1]) == 0 && sock_attach(&r, sv[1]) == 0);
  CHECK(sock_pool_stats(&r, &stats) == 0);

  /* An fd closed outside the sock_ API: sock_clear releases its state, close(2) is ours. */
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  CHECK(sock_open(NULL, sv[0]) == 0);
  sock_clear(sv[0]);
  CHECK(sock_is_closed(sv[0]));
  CHECK(close(sv[0]) == 0 && close(sv[1]) == 0);

  /* Stop: on_shutdown and on_close for the timer and the attached socket, then -1, errno 0. */
  reactor_stop(&r);
  do {
    errno = EINVAL;
    review = reactor_review(&r);
  } while (review >= 0);
  CHECK(errno == 0 && r._impl == NULL);
  CHECK(g_shutdowns == 2 && g_closes == 3);
  return 0;
}

int headers_c_smoke(void) {
  const struct CApi* api = &kApi;
  int fd;
  int step;

  CHECK(strcmp(LIBSOCK_VERSION, "2.0.0") == 0 && strcmp(LIBREACT_VERSION, "1.0.0") == 0);
  /* The helpers, called through the table. */
  CHECK(api->init_socklib(1024) == 0);
  CHECK(api->max_capacity() > 0);
  fd = api->listen("127.0.0.1", "0");
  CHECK(fd >= 0);
  CHECK(api->set_non_block(fd) == 0);
  CHECK(api->accept(NULL, fd) == -1 && errno == EAGAIN);
  CHECK(close(fd) == 0);
  CHECK(api->connect(NULL, "127.0.0.1", NULL) == -1 && errno == EINVAL);

  step = socketpair_round_trip();
  if (step) return step;
  return reactor_round_trip();
}
