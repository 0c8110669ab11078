// Bad arguments to the C API: every fd-taking call refuses a negative, out-of-range, closed
// or never-opened fd with EBADF (void calls do nothing); NULL buffers with a length give
// EINVAL and zero lengths succeed as no-ops; ownership of .move/.file buffers passes even on
// error (ASan's leak check proves the frees).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::run_until;

int g_closes = 0;
void count_close(struct Reactor*, int) { ++g_closes; }

int g_clears = 0;
void count_clear(int, struct sockTLC*) { ++g_clears; }

struct BadFd {
  const char* what;
  int fd;
};

bool is_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

// A reactor of the test's own, stopped (engine state freed) at the end.
class WithReactor : public ::testing::Test {
 protected:
  void SetUp() override {
    g_closes = 0;
    g_clears = 0;
    r_.on_close = count_close;
    ASSERT_EQ(reactor_init(&r_), 0);
  }
  void TearDown() override {
    if (!r_._impl) return;
    reactor_stop(&r_);
    ASSERT_TRUE(run_until(&r_, [&] { return r_._impl == nullptr; }));
  }
  struct Reactor r_ = {};
};

class BadInputTest : public WithReactor {
 protected:
  void SetUp() override {
    WithReactor::SetUp();
    // Opened, but never with the sock_ API.
    never_opened_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ASSERT_GE(never_opened_, 0);
    // Opened with the sock_ API, then closed by it. The tests open no fd after this one
    // (except where they say so), so the number stays closed.
    closed_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ASSERT_EQ(sock_open(nullptr, closed_), 0);
    sock_force_close(nullptr, closed_);
    ASSERT_FALSE(is_open(closed_));
  }
  void TearDown() override {
    EXPECT_TRUE(is_open(never_opened_));  // no call closed an fd it does not own
    close(never_opened_);
    WithReactor::TearDown();
  }
  // The fds no sock_ call accepts.
  std::vector<BadFd> not_sock_fds() const {
    return {{"negative", -1},
            {"out of range", 1 << 30},
            {"closed", closed_},
            {"never opened with sock_", never_opened_}};
  }
  // The fds that are not open at all (reactor_add takes any open fd).
  std::vector<BadFd> not_open_fds() const {
    return {{"negative", -1}, {"out of range", 1 << 30}, {"closed", closed_}};
  }

  int never_opened_ = -1;
  int closed_ = -1;
};

// Expects -1 with errno `code` from `call`.
#define EXPECT_FAILS_WITH(code, call) \
  do {                                \
    errno = 0;                        \
    EXPECT_EQ((call), -1);            \
    EXPECT_EQ(errno, (code));         \
  } while (0)
#define EXPECT_EBADF(call) EXPECT_FAILS_WITH(EBADF, call)
#define EXPECT_EINVAL(call) EXPECT_FAILS_WITH(EINVAL, call)

TEST_F(BadInputTest, ReadWriteAndFlushRefuseBadFdsWithEbadf) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    char buf[10];
    EXPECT_EBADF(sock_read(bad.fd, buf, sizeof buf));
    EXPECT_EBADF(sock_read(bad.fd, buf, 0));
    EXPECT_EBADF(sock_write(bad.fd, "x", 1));
    EXPECT_EBADF(sock_flush(bad.fd));
  }
}

TEST_F(BadInputTest, MovedBufferAndFileAreReleasedEvenWhenTheFdIsBad) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    // The buffer is the library's from the call on: a leak here fails under ASan.
    void* moved = malloc(4096);
    EXPECT_EBADF(sock_write2(.fd = bad.fd, .buffer = moved, .length = 4096, .move = 1));
  }
  // A FILE* is fclose'd: its descriptor is gone afterwards. (Opening it would take the closed
  // fd's number, so only the fds that cannot be reused are tried.)
  for (const int fd : {-1, 1 << 30}) {
    FILE* file = tmpfile();
    ASSERT_NE(file, nullptr);
    const int file_fd = fileno(file);
    EXPECT_EBADF(sock_write2(.fd = fd, .buffer = file, .file = 1));
    EXPECT_FALSE(is_open(file_fd));
  }
}

TEST_F(BadInputTest, StatusAndIsClosedReportBadFds) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    EXPECT_EBADF(sock_status(bad.fd));
    EXPECT_TRUE(sock_is_closed(bad.fd));
  }
}

TEST_F(BadInputTest, AttachAndSendPacketRefuseBadFdsWithEbadf) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    EXPECT_EBADF(sock_attach(&r_, bad.fd));
    Packet* packet = sock_checkout_packet();
    ASSERT_NE(packet, nullptr);
    packet->length = 3;
    packet->internal_memory[0] = 'a';
    EXPECT_EBADF(sock_send_packet(bad.fd, packet));
    sock_free_packet(packet);  // on error the caller keeps the packet
  }
  SockPoolStats stats{};
  ASSERT_EQ(sock_pool_stats(nullptr, &stats), 0);
  EXPECT_EQ(stats.outstanding, 0u);
}

TEST_F(BadInputTest, TransportLayerCallsRefuseBadFdsWithEbadf) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    sockTLC layer = {};
    layer.on_clear = count_clear;
    errno = 0;
    EXPECT_EQ(sock_tlc_get(bad.fd), nullptr);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EBADF(sock_tlc_set(bad.fd, &layer));
    EXPECT_EBADF(sock_tlc_add(bad.fd, &layer));
    EXPECT_EQ(layer.next, nullptr);  // the refused layer was not linked
    EXPECT_EBADF(sock_tlc_write(bad.fd, nullptr, "x", 1));
  }
  EXPECT_EQ(g_clears, 0);  // the caller's layers were never taken
}

TEST_F(BadInputTest, ReactorAddAndRemoveRefuseBadFdsWithEbadf) {
  for (const BadFd& bad : not_open_fds()) {
    SCOPED_TRACE(bad.what);
    EXPECT_EBADF(reactor_add(&r_, bad.fd));
    EXPECT_EBADF(reactor_add_timer(&r_, bad.fd, 10));
  }
  for (const BadFd& bad : not_sock_fds()) {  // none of them is attached
    SCOPED_TRACE(bad.what);
    EXPECT_EBADF(reactor_remove(&r_, bad.fd));
  }
}

TEST_F(BadInputTest, OpenAcceptAndNonBlockRefuseFdsThatAreNotOpen) {
  for (const BadFd& bad : not_open_fds()) {
    SCOPED_TRACE(bad.what);
    EXPECT_EBADF(sock_open(nullptr, bad.fd));
    EXPECT_EBADF(sock_open(&r_, bad.fd));
    EXPECT_EBADF(sock_accept(nullptr, bad.fd));
    EXPECT_EBADF(sock_set_non_block(bad.fd));
  }
}

TEST_F(BadInputTest, VoidCallsOnBadFdsDoNothing) {
  for (const BadFd& bad : not_sock_fds()) {
    SCOPED_TRACE(bad.what);
    sock_clear(bad.fd);
    sock_close(&r_, bad.fd);
    sock_close(nullptr, bad.fd);
    sock_force_close(&r_, bad.fd);
    sock_force_close(nullptr, bad.fd);
    reactor_close(&r_, bad.fd);
    reactor_reset_timer(bad.fd);
  }
  ASSERT_TRUE(run_until(&r_, [] { return true; }));
  EXPECT_EQ(g_closes, 0);
  EXPECT_FALSE(is_open(closed_));
  // TearDown checks that the never-opened fd is still open.
}

// ---------------------------------------------------------------------------------------
// NULL buffers and zero lengths, on a valid fd.

class ValidFdTest : public WithReactor {
 protected:
  void SetUp() override {
    WithReactor::SetUp();
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair_), 0);
    ASSERT_EQ(sock_open(nullptr, pair_[0]), 0);
  }
  void TearDown() override {
    sock_force_close(nullptr, pair_[0]);
    close(pair_[1]);
    WithReactor::TearDown();
  }
  // Bytes the peer can read now (none expected).
  ssize_t peer_pending() {
    char buf[16];
    const ssize_t n = recv(pair_[1], buf, sizeof buf, MSG_DONTWAIT);
    return n < 0 && errno == EAGAIN ? 0 : n;
  }
  int pair_[2] = {-1, -1};
};

TEST_F(ValidFdTest, NullBuffersWithALengthGiveEinval) {
  const int fd = pair_[0];
  EXPECT_EINVAL(sock_read(fd, nullptr, 10));
  EXPECT_EINVAL(sock_write(fd, nullptr, 5));
  EXPECT_EINVAL(sock_write2(.fd = fd, .buffer = nullptr, .length = 5, .move = 1));
  EXPECT_EINVAL(sock_send_packet(fd, nullptr));
  EXPECT_EINVAL(sock_tlc_write(fd, nullptr, nullptr, 5));
  EXPECT_EINVAL(sock_tlc_add(fd, nullptr));
  EXPECT_EQ(peer_pending(), 0);
  EXPECT_GE(sock_status(fd), 0);  // refused calls leave the connection intact
}

TEST_F(ValidFdTest, ZeroLengthsAreNoOpsThatSucceed) {
  const int fd = pair_[0];
  char buf[10];
  EXPECT_EQ(sock_read(fd, buf, 0), 0);
  EXPECT_EQ(sock_read(fd, nullptr, 0), 0);
  EXPECT_EQ(sock_write(fd, "x", 0), 0);
  EXPECT_EQ(sock_write(fd, nullptr, 0), 0);
  // A zero-length .move buffer is still the library's to free (ASan's leak check).
  EXPECT_EQ(sock_write2(.fd = fd, .buffer = malloc(16), .length = 0, .move = 1), 0);
  EXPECT_EQ(sock_tlc_write(fd, nullptr, "x", 0), 0);
  EXPECT_EQ(sock_flush(fd), 0);
  EXPECT_EQ(peer_pending(), 0);  // nothing was sent
  EXPECT_GE(sock_status(fd), 0);
}

TEST_F(ValidFdTest, NegativePacketLengthGivesEinvalAndTheCallerKeepsThePacket) {
  Packet* packet = sock_checkout_packet();
  ASSERT_NE(packet, nullptr);
  packet->length = -1;
  EXPECT_EINVAL(sock_send_packet(pair_[0], packet));
  sock_free_packet(packet);
  sock_free_packet(nullptr);  // a no-op
  EXPECT_EQ(peer_pending(), 0);
}

// A packet's internal memory holds BUFFER_PACKET_SIZE bytes: a longer length would send what
// lies past it (the packet's metadata, then the pool's next packet: another connection's data).
TEST_F(ValidFdTest, PacketLongerThanItsInternalMemoryGivesEinvalAndNothingOfTheChainIsSent) {
  Packet* first = sock_checkout_packet();
  ASSERT_NE(first, nullptr);
  Packet* too_long = sock_checkout_packet();
  ASSERT_NE(too_long, nullptr);
  first->internal_memory[0] = 'a';
  first->length = 1;
  first->metadata.next = too_long;
  too_long->length = BUFFER_PACKET_SIZE + 1;
  errno = 0;
  const ssize_t r = sock_send_packet(pair_[0], first);
  EXPECT_EQ(r, -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(peer_pending(), 0);
  if (r == -1) sock_free_packet(first);  // on error the chain is the caller's

  // Nor may a buffer inside the internal memory run past its end.
  Packet* offset = sock_checkout_packet();
  ASSERT_NE(offset, nullptr);
  offset->buffer = offset->internal_memory + 100;
  offset->length = BUFFER_PACKET_SIZE - 99;
  errno = 0;
  const ssize_t r2 = sock_send_packet(pair_[0], offset);
  EXPECT_EQ(r2, -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(peer_pending(), 0);
  if (r2 == -1) sock_free_packet(offset);

  // A full packet is not too long.
  Packet* full = sock_checkout_packet();
  ASSERT_NE(full, nullptr);
  std::memset(full->internal_memory, 'b', BUFFER_PACKET_SIZE);
  full->length = BUFFER_PACKET_SIZE;
  ASSERT_EQ(sock_send_packet(pair_[0], full), 0);
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = recv(pair_[1], buf, sizeof buf, MSG_DONTWAIT)) > 0) {
    got.append(buf, static_cast<std::size_t>(n));
  }
  EXPECT_TRUE(got == std::string(BUFFER_PACKET_SIZE, 'b')) << got.size() << " bytes";
}

// metadata.is_file with no FILE*: refused before anything looks at the file (fileno(NULL)
// crashed the caller's thread).
TEST_F(ValidFdTest, FilePacketWithoutAFileGivesEinvalAndTheCallerKeepsIt) {
  Packet* packet = sock_checkout_packet();
  ASSERT_NE(packet, nullptr);
  packet->buffer = nullptr;
  packet->length = 0;
  packet->metadata.is_file = 1;
  EXPECT_EINVAL(sock_send_packet(pair_[0], packet));
  sock_free_packet(packet);
  EXPECT_EQ(peer_pending(), 0);
  EXPECT_GE(sock_status(pair_[0]), 0);
}

TEST_F(ValidFdTest, NullReactorGivesEinval) {
  const int fd = pair_[0];
  EXPECT_EINVAL(reactor_init(nullptr));
  EXPECT_EINVAL(reactor_review(nullptr));
  EXPECT_EINVAL(reactor_add(nullptr, fd));
  EXPECT_EINVAL(reactor_remove(nullptr, fd));
  EXPECT_EINVAL(sock_attach(nullptr, fd));
  const int timer = reactor_make_timer();
  ASSERT_GE(timer, 0);
  EXPECT_EINVAL(reactor_add_timer(nullptr, timer, 10));
  EXPECT_EINVAL(reactor_add_timer(&r_, timer, 0));
  close(timer);
  SockPoolStats stats{};
  struct Reactor never_used = {};
  EXPECT_EINVAL(sock_pool_stats(&never_used, &stats));
  EXPECT_EINVAL(sock_pool_stats(nullptr, nullptr));
  EXPECT_EQ(never_used._impl, nullptr);  // asking about it created nothing
  reactor_stop(nullptr);
  reactor_close(nullptr, fd);
  EXPECT_GE(sock_status(fd), 0);
  EXPECT_EQ(g_closes, 0);
}

TEST_F(ValidFdTest, WritesAfterSockCloseAreRefusedWithEpipe) {
  // An fd attached to a reactor, so the close waits for the reactor's flush step.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
  const int fd = fds[0];
  ASSERT_EQ(sock_open(&r_, fd), 0);
  sock_close(&r_, fd);  // closes at the reactor's next flush step
  EXPECT_TRUE(is_open(fd));
  errno = 0;
  EXPECT_EQ(sock_write(fd, "x", 1), -1);
  EXPECT_EQ(errno, EPIPE);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = fd, .buffer = malloc(8), .length = 8, .move = 1), -1);
  EXPECT_EQ(errno, EPIPE);
  Packet* packet = sock_checkout_packet();
  ASSERT_NE(packet, nullptr);
  packet->length = 1;
  errno = 0;
  EXPECT_EQ(sock_send_packet(fd, packet), -1);
  EXPECT_EQ(errno, EPIPE);
  sock_free_packet(packet);
  ASSERT_TRUE(run_until(&r_, [] { return g_closes == 1; }));
  EXPECT_FALSE(is_open(fd));
  EXPECT_EBADF(sock_write(fd, "x", 1));  // once closed: EBADF
  close(fds[1]);
}

// ---------------------------------------------------------------------------------------
// Addresses and sizes.

TEST(BadAddressTest, ListenAndConnectRefuseBadAddresses) {
  errno = 0;
  EXPECT_EQ(sock_listen(nullptr, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_listen("not-an-address", "80"), -1);
  EXPECT_NE(errno, 0);
  errno = 0;
  EXPECT_EQ(sock_connect(nullptr, "no-such-host.invalid", "80"), -1);
  EXPECT_NE(errno, 0);
  errno = 0;
  EXPECT_EQ(sock_connect(nullptr, "127.0.0.1", nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST(BadSizeTest, InitSocklibRefusesSizesTheTableCannotIndex) {
  errno = 0;
  EXPECT_EQ(init_socklib(SIZE_MAX), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(init_socklib(engine::kMaxFds + 1), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(init_socklib(engine::kMaxFds), 0);
  EXPECT_EQ(init_socklib(1024), 0);
}

}  // namespace
