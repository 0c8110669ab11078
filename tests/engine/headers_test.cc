// The public headers used from C++20, and the C11 smoke test (headers_c.c) run from here.
// libreact.h comes first, so it must compile with nothing before it (libsock.h-first is
// proven in C by headers_c.c and in C++ by socket_ops_test.cc; libreact.h-first in C by
// seed_quick_example.c).
#include "engine/libreact.h"
#include "engine/libsock.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

extern "C" int headers_c_smoke(void);

namespace {

// The constants keep the seed's values: 16 KB records plus 1 KB of headroom per packet.
static_assert(BUFFER_PACKET_SIZE == 17 * 1024);
static_assert(BUFFER_FILE_READ_SIZE == 16 * 1024);
static_assert(sizeof(Packet::internal_memory) == BUFFER_PACKET_SIZE);
static_assert(REACTOR_MAX_EVENTS > 0 && REACTOR_TICK > 0);

// Every function has exactly the declared type (a changed prototype fails here).
static_assert(std::is_same_v<decltype(&sock_set_non_block), int (*)(int)>);
static_assert(std::is_same_v<decltype(&sock_max_capacity), ssize_t (*)()>);
static_assert(std::is_same_v<decltype(&sock_listen), int (*)(const char*, const char*)>);
static_assert(std::is_same_v<decltype(&init_socklib), int8_t (*)(size_t)>);
static_assert(std::is_same_v<decltype(&sock_accept), int (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&sock_connect), int (*)(Reactor*, const char*, const char*)>);
static_assert(std::is_same_v<decltype(&sock_open), int (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&sock_attach), int (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&sock_clear), void (*)(int)>);
static_assert(std::is_same_v<decltype(&sock_status), int (*)(int)>);
static_assert(std::is_same_v<decltype(&sock_read), ssize_t (*)(int, void*, size_t)>);
static_assert(std::is_same_v<decltype(&sock_write2_fn), ssize_t (*)(SockWriteOpt)>);
static_assert(std::is_same_v<decltype(&sock_flush), ssize_t (*)(int)>);
static_assert(std::is_same_v<decltype(&sock_close), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&sock_force_close), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&sock_checkout_packet), Packet* (*)()>);
static_assert(std::is_same_v<decltype(&sock_send_packet), ssize_t (*)(int, Packet*)>);
static_assert(std::is_same_v<decltype(&sock_free_packet), void (*)(Packet*)>);
static_assert(std::is_same_v<decltype(&sock_tlc_get), sockTLC* (*)(int)>);
static_assert(std::is_same_v<decltype(&sock_tlc_set), int (*)(int, sockTLC*)>);
static_assert(std::is_same_v<decltype(&sock_tlc_add), int (*)(int, sockTLC*)>);
static_assert(
    std::is_same_v<decltype(&sock_tlc_write), int (*)(int, sockTLC*, const void*, size_t)>);
static_assert(std::is_same_v<decltype(&sock_pool_stats), int (*)(Reactor*, SockPoolStats*)>);
static_assert(std::is_same_v<decltype(&sock_packet_footprint), size_t (*)()>);
static_assert(std::is_same_v<decltype(&reactor_init), int (*)(Reactor*)>);
static_assert(std::is_same_v<decltype(&reactor_review), int (*)(Reactor*)>);
static_assert(std::is_same_v<decltype(&reactor_stop), void (*)(Reactor*)>);
static_assert(std::is_same_v<decltype(&reactor_add), int (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&reactor_remove), int (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&reactor_close), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(&reactor_make_timer), int (*)()>);
static_assert(std::is_same_v<decltype(&reactor_add_timer), int (*)(Reactor*, int, long)>);
static_assert(std::is_same_v<decltype(&reactor_reset_timer), void (*)(int)>);

// The callback and layer fields have the types the seed's users assign to.
static_assert(std::is_same_v<decltype(Reactor::on_data), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(Reactor::on_ready), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(Reactor::on_shutdown), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(Reactor::on_close), void (*)(Reactor*, int)>);
static_assert(std::is_same_v<decltype(Reactor::last_tick), time_t>);
static_assert(std::is_same_v<decltype(Reactor::maxfd), int>);
static_assert(std::is_same_v<decltype(Reactor::_impl), void*>);
static_assert(std::is_same_v<decltype(sockTLC::wrap), int (*)(int, Packet*, void*)>);
static_assert(
    std::is_same_v<decltype(sockTLC::unwrap), int (*)(int, void*, ssize_t*, const size_t, void*)>);
static_assert(std::is_same_v<decltype(sockTLC::on_clear), void (*)(int, sockTLC*)>);
static_assert(std::is_same_v<decltype(sockTLC::before_close), void (*)(int, sockTLC*)>);
static_assert(std::is_same_v<decltype(Packet::PacketMetadata::next), Packet*>);

TEST(HeadersTest, CApiSmokeFromC11Passes) {
  // A non-zero result is the line of headers_c.c whose check failed.
  EXPECT_EQ(headers_c_smoke(), 0);
}

TEST(HeadersTest, SockWriteOptLeftOutOptionsAreZero) {
  constexpr SockWriteOpt none{};
  static_assert(none.fd == 0 && none.buffer == nullptr && none.length == 0 && !none.move &&
                !none.urgent && !none.file && !none.merge);
  constexpr SockWriteOpt some{.fd = 3, .length = 5, .urgent = 1};
  static_assert(some.fd == 3 && some.buffer == nullptr && some.length == 5 && !some.move &&
                some.urgent && !some.file && !some.merge);
}

// Reads exactly `want` bytes already in fd's receive queue (fds without a reactor write to
// the kernel at once), so 0 ("no data yet") is a failure.
std::string read_exactly(int fd, std::size_t want) {
  std::string got(want, '\0');
  std::size_t n = 0;
  while (n < want) {
    const ssize_t r = sock_read(fd, got.data() + n, want - n);
    if (r <= 0) break;
    n += static_cast<std::size_t>(r);
  }
  got.resize(n);
  return got;
}

// A connected pair opened for the sock_ API without a reactor: sv[0] writes, sv[1] (set
// non-blocking) reads.
void open_pair(int sv[2]) {
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_EQ(sock_set_non_block(sv[1]), 0);
  ASSERT_EQ(sock_open(nullptr, sv[0]), 0);
  ASSERT_EQ(sock_open(nullptr, sv[1]), 0);
}

TEST(HeadersTest, EveryWriteOptionRoundTripsFromCxx) {
  int sv[2];
  ASSERT_NO_FATAL_FAILURE(open_pair(sv));
  EXPECT_FALSE(sock_is_closed(sv[0]));
  EXPECT_TRUE(sock_status(sv[1]) & O_NONBLOCK);
  char none[8];
  EXPECT_EQ(sock_read(sv[1], none, sizeof none), 0);  // nothing yet: 0, not an error

  ASSERT_EQ(sock_write(sv[0], "hello ", 6), 0);
  auto* moved = static_cast<char*>(std::malloc(6));
  ASSERT_NE(moved, nullptr);
  std::memcpy(moved, "moved ", 6);
  // C++ designators follow the declaration order: fd, buffer, length, move, urgent, file, merge.
  ASSERT_EQ(sock_write2(.fd = sv[0], .buffer = moved, .length = 6, .move = 1), 0);
  ASSERT_EQ(sock_write2(.fd = sv[0], .buffer = "urgent ", .length = 7, .urgent = 1), 0);
  ASSERT_EQ(sock_write2(.fd = sv[0], .buffer = "merged ", .length = 7, .merge = 1), 0);
  FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  ASSERT_GE(std::fputs("xxfile ", file), 0);
  ASSERT_EQ(std::fseek(file, 2, SEEK_SET), 0);  // .file sends from the current offset
  ASSERT_EQ(sock_write2(.fd = sv[0], .buffer = file, .length = 5, .file = 1), 0);

  Packet* first = sock_checkout_packet();
  Packet* second = sock_checkout_packet();
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(first->buffer, first->internal_memory);
  EXPECT_EQ(first->length, 0);
  EXPECT_EQ(first->metadata.next, nullptr);
  EXPECT_FALSE(first->metadata.can_interrupt || first->metadata.is_file ||
               first->metadata.external || first->metadata.urgent);
  std::memcpy(first->internal_memory, "packet", 6);
  first->length = 6;
  first->metadata.next = second;
  second->buffer = std::malloc(9);
  ASSERT_NE(second->buffer, nullptr);
  std::memcpy(second->buffer, "+external", 9);
  second->length = 9;
  second->metadata.external = 1;  // freed by the library with the packet
  ASSERT_EQ(sock_send_packet(sv[0], first), 0);
  EXPECT_EQ(sock_flush(sv[0]), 0);  // everything already went out

  const std::string expected = "hello moved urgent merged file packet+external";
  EXPECT_EQ(read_exactly(sv[1], expected.size()), expected);
  sock_close(nullptr, sv[0]);
  EXPECT_TRUE(sock_is_closed(sv[0]));
  errno = EINVAL;
  EXPECT_EQ(sock_read(sv[1], none, sizeof none), -1);
  EXPECT_EQ(errno, 0);  // EOF
  sock_force_close(nullptr, sv[1]);
  EXPECT_TRUE(sock_is_closed(sv[1]));
}

// A transport layer adding 1 to every byte on the way out and subtracting it on the way in.
struct ShiftLayer {
  int clears = 0;
  int before_closes = 0;
};

int shift_wrap(int, Packet* packet, void*) {
  auto* bytes = static_cast<unsigned char*>(packet->buffer);
  for (ssize_t i = 0; i < packet->length; ++i) ++bytes[i];
  return 0;
}

int shift_unwrap(int, void* buffer, ssize_t* len, const size_t, void*) {
  auto* bytes = static_cast<unsigned char*>(buffer);
  for (ssize_t i = 0; i < *len; ++i) --bytes[i];
  return 0;
}

void shift_on_clear(int, sockTLC* tlc) { ++static_cast<ShiftLayer*>(tlc->udata)->clears; }

void shift_before_close(int fd, sockTLC* tlc) {
  ++static_cast<ShiftLayer*>(tlc->udata)->before_closes;
  sock_tlc_write(fd, tlc, "bye", 3);  // below this, the lowest layer: raw bytes
}

TEST(HeadersTest, TransportLayerStructWrapsUnwrapsAndClosesFromCxx) {
  int sv[2];
  ASSERT_NO_FATAL_FAILURE(open_pair(sv));
  ShiftLayer tx_state, rx_state;
  sockTLC tx{.next = nullptr,
             .udata = &tx_state,
             .wrap = shift_wrap,
             .unwrap = shift_unwrap,
             .on_clear = shift_on_clear,
             .before_close = shift_before_close};
  sockTLC rx{nullptr, &rx_state, shift_wrap, shift_unwrap, shift_on_clear, nullptr};
  ASSERT_EQ(sock_tlc_set(sv[0], &tx), 0);
  ASSERT_EQ(sock_tlc_add(sv[1], &rx), 0);
  EXPECT_EQ(sock_tlc_get(sv[1]), &rx);

  ASSERT_EQ(sock_write(sv[0], "HAL", 3), 0);
  EXPECT_EQ(read_exactly(sv[1], 3), "HAL");
  ASSERT_EQ(sock_tlc_set(sv[1], nullptr), 0);  // now the wire bytes, as they are
  EXPECT_EQ(rx_state.clears, 1);
  ASSERT_EQ(sock_write(sv[0], "HAL", 3), 0);
  EXPECT_EQ(read_exactly(sv[1], 3), "IBM");

  sock_close(nullptr, sv[0]);  // before_close queues "bye" raw, then the fd closes
  EXPECT_TRUE(sock_is_closed(sv[0]));
  EXPECT_EQ(tx_state.before_closes, 1);
  EXPECT_EQ(tx_state.clears, 1);
  EXPECT_EQ(read_exactly(sv[1], 3), "bye");
  sock_force_close(nullptr, sv[1]);
}

int g_ticks = 0;
int g_closes = 0;

TEST(HeadersTest, StaticReactorNeedsNoInitAndStopsFromCxx) {
  // The seed's static initialisation, in declaration order; omitted members take libreact.h's
  // C++ zero defaults.
  static Reactor r = {.on_data =
                          [](Reactor*, int fd) {
                            reactor_reset_timer(fd);
                            ++g_ticks;
                          },
                      .on_close = [](Reactor*, int) { ++g_closes; },
                      .maxfd = 1024};
  EXPECT_EQ(r._impl, nullptr);
  const int timer = reactor_make_timer();
  ASSERT_GE(timer, 0);
  ASSERT_EQ(reactor_add_timer(&r, timer, 1), 0);  // initialises the reactor
  EXPECT_NE(r._impl, nullptr);
  for (int i = 0; i < 1000 && g_ticks == 0; ++i) ASSERT_GE(reactor_review(&r), 0);
  EXPECT_GT(g_ticks, 0);
  EXPECT_NE(r.last_tick, 0);
  SockPoolStats stats{};
  EXPECT_EQ(sock_pool_stats(&r, &stats), 0);
  EXPECT_EQ(stats.outstanding, stats.checkouts - stats.returns);

  reactor_stop(&r);
  int review;
  do {
    errno = EINVAL;
    review = reactor_review(&r);
  } while (review >= 0);
  EXPECT_EQ(errno, 0);
  EXPECT_EQ(r._impl, nullptr);
  EXPECT_EQ(g_closes, 1);  // the timer, closed by the stop
}

}  // namespace
