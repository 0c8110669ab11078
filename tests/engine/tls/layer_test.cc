// engine/tls/layer.cc: one connection's TLS layer, both ends in one process on one reactor
// (the server side from sock_tls_accept, the client from sock_tls_connect, or OpenSSL itself
// where a test needs what the engine's client does not do). Everything written is compared
// byte for byte.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "engine/tls/testing_hooks.h"
#include "tests/engine/tls/client_sealer.h"
#include "tests/engine/tls/tls_fixture.h"
#include "tests/testing/loopback.h"
#include "tests/testing/run_until.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::ClientSealer;
using testing_support::first_difference;
using testing_support::pattern;
using testing_support::run_until;
using testing_support::test_pki;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;
using testing_support::TlsFixture;

constexpr std::size_t kRecord = BUFFER_FILE_READ_SIZE;

class LayerTest : public TlsFixture {
 protected:
  // Closes the client gracefully and runs until both ends are closed.
  void close_both(int client, int server) {
    sock_close(&r_, client);
    EXPECT_TRUE(run_until(&r_, [&] { return conns_[client].closed && conns_[server].closed; }));
  }

  // Replaces the server's configuration with one for `files`.
  void serve(const testing_support::TlsFiles& files) {
    sock_tls_free(server_tls_);
    server_tls_ = sock_tls_server_new(files.cert.c_str(), files.key.c_str());
    ASSERT_NE(server_tls_, nullptr) << sock_tls_error();
  }
};

// Sizes around the record boundaries (a record carries BUFFER_FILE_READ_SIZE bytes), and 1 MB:
// written at once after sock_tls_connect (so held through the handshake), echoed, compared.
TEST_F(LayerTest, EchoIsByteExactAcrossRecordBoundaries) {
  for (const std::size_t size : {std::size_t{1}, kRecord - 1, kRecord, kRecord + 1, 2 * kRecord,
                                 3 * kRecord + 1, std::size_t{1} << 20}) {
    SCOPED_TRACE(size);
    int server = -1;
    const int client = connect_pair(&server);
    const std::string data = pattern(size, static_cast<unsigned>(size));
    ASSERT_EQ(sock_write(client, data.data(), data.size()), 0);
    ASSERT_TRUE(run_until_received(client, size)) << conns_[client].got.size();
    EXPECT_EQ(conns_[server].got.size(), size);
    EXPECT_EQ(conns_[client].got.size(), size);
    EXPECT_EQ(first_difference(conns_[client].got, data), size);
    close_both(client, server);
    EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_LOCAL);
    EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_PEER);
  }
  EXPECT_TRUE(log_.empty()) << log_.front();
}

// Writes made on both ends before the handshake completes wait in the queue (sock_pending
// counts them), then go out in order once it is done.
class HeldWritesTest : public LayerTest {
 protected:
  void on_accept(int fd) override {
    LayerTest::on_accept(fd);
    EXPECT_EQ(sock_tls_established(fd), 0);
    EXPECT_EQ(sock_write(fd, "greeting;", 9), 0);
  }
};

TEST_F(HeldWritesTest, WritesBeforeTheHandshakeArriveInOrderAfterIt) {
  const int client = connect_tls();
  const std::vector<std::string> parts = {"one;", pattern(3 * kRecord + 7, 1), "two;",
                                          pattern(100, 2), "three;"};
  std::string all;
  for (const std::string& p : parts) {
    ASSERT_EQ(sock_write(client, p.data(), p.size()), 0);
    all += p;
  }
  EXPECT_EQ(sock_tls_established(client), 0);
  // The held writes, and the ClientHello queued before them.
  EXPECT_GT(sock_pending(client), static_cast<ssize_t>(all.size()));
  const std::string expected = "greeting;" + all;
  ASSERT_TRUE(run_until_received(client, expected.size()));
  EXPECT_EQ(first_difference(conns_[client].got, expected), expected.size());
  ASSERT_EQ(accepted_.size(), 1u);
  EXPECT_EQ(conns_[accepted_[0]].got, all);
  close_both(client, accepted_[0]);
}

// Held writes beyond the high watermark (1 MiB by default) before the handshake completes:
// reading is not paused for them (only reading the peer's handshake can release them).
TEST_F(LayerTest, HeldWritesAboveTheHighWatermarkDoNotStallTheHandshake) {
  int server = -1;
  const int client = connect_pair(&server);
  const std::string data = pattern((std::size_t{1} << 20) + 1, 3);
  ASSERT_EQ(sock_write(client, data.data(), data.size()), 0);
  ASSERT_TRUE(run_until_received(client, data.size()));
  EXPECT_EQ(first_difference(conns_[client].got, data), data.size());
  close_both(client, server);
}

// An urgent write made while the handshake runs goes before the held writes (it jumps to the
// first packet boundary that starts a write, as without TLS).
TEST_F(LayerTest, UrgentWriteDuringTheHandshakeGoesFirst) {
  const int client = connect_tls();
  ASSERT_EQ(sock_write(client, "held;", 5), 0);
  ASSERT_EQ(sock_write2(.fd = client, .buffer = "URGENT;", .length = 7, .urgent = 1), 0);
  ASSERT_TRUE(run_until_received(client, 12));
  EXPECT_EQ(conns_[client].got, "URGENT;held;");
  close_both(client, accepted_[0]);
}

// Urgent data overtakes queued records that are not encrypted yet, at a write's start: TLS
// encrypts records in the order they leave (sequence numbers), not the order they were
// queued, so the reader still decrypts everything and sees the urgent bytes whole.
TEST_F(LayerTest, UrgentWriteOvertakesQueuedRecordsAtAWriteBoundary) {
  echo_ = false;
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_EQ(sock_write(client, "x", 1), 0);
  ASSERT_TRUE(run_until_established(client, server));
  ASSERT_TRUE(run_until_received(server, 1));
  paused_.insert(client);
  // Small kernel buffers, so that most of the bulk stays queued while the client waits.
  constexpr int kBuffer = 32768;
  testing_support::set_sndbuf(server, kBuffer);
  ASSERT_EQ(setsockopt(client, SOL_SOCKET, SO_RCVBUF, &kBuffer, sizeof kBuffer), 0);
  // Separate writes of one record each (an urgent write never splits a write), more than one
  // sendmsg seals (64 records): a sealed record has its place in the sequence, so the urgent
  // write goes after every record sealed by then.
  constexpr int kWrites = 128;
  const std::string bulk = pattern(kWrites * kRecord, 7);
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_EQ(sock_write(server, bulk.data() + i * kRecord, kRecord), 0);
  }
  run_iterations(3);
  ASSERT_GT(sock_pending(server), 0) << "the kernel took everything: nothing to overtake";
  const std::string urgent = "URGENT:" + pattern(1000, 8);
  ASSERT_EQ(
      sock_write2(.fd = server, .buffer = urgent.data(), .length = urgent.size(), .urgent = 1), 0);
  const std::size_t total = bulk.size() + urgent.size();
  ASSERT_TRUE(run_until(&r_, [&] {
    resume_reading(client);
    return conns_[client].got.size() >= total || conns_[client].closed;
  }));
  const std::string& got = conns_[client].got;
  ASSERT_EQ(got.size(), total);
  const std::size_t at = got.find("URGENT:");
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(at % kRecord, 0u) << "urgent bytes inside a write, at " << at;
  EXPECT_LT(at, bulk.size()) << "urgent bytes overtook nothing";
  EXPECT_EQ(got.compare(at, urgent.size(), urgent), 0);
  const std::string rest = got.substr(0, at) + got.substr(at + urgent.size());
  EXPECT_EQ(first_difference(rest, bulk), bulk.size());
  close_both(client, server);
}

// .file writes are read into records and encrypted (no sendfile under TLS): a whole file, a
// slice from an offset, with copies around them, then a close that follows all of it.
TEST_F(LayerTest, FileWritesAreByteExact) {
  echo_ = false;
  const std::string content = pattern((std::size_t{1} << 20) + 1001, 11);
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/file_write.bin";
  FILE* out = std::fopen(path.c_str(), "wb");
  ASSERT_NE(out, nullptr);
  ASSERT_EQ(std::fwrite(content.data(), 1, content.size(), out), content.size());
  ASSERT_EQ(std::fclose(out), 0);

  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_TRUE(run_until_established(client, server));
  FILE* whole = std::fopen(path.c_str(), "rb");
  FILE* slice = std::fopen(path.c_str(), "rb");
  ASSERT_TRUE(whole && slice);
  constexpr long kOffset = 12345;
  constexpr std::size_t kSlice = 3 * kRecord + 5;
  ASSERT_EQ(std::fseek(slice, kOffset, SEEK_SET), 0);
  ASSERT_EQ(sock_write(server, "head;", 5), 0);
  ASSERT_EQ(sock_write2(.fd = server, .buffer = whole, .file = 1), 0);
  ASSERT_EQ(sock_write(server, ";middle;", 8), 0);
  ASSERT_EQ(sock_write2(.fd = server, .buffer = slice, .length = kSlice, .file = 1), 0);
  ASSERT_EQ(sock_write(server, ";tail", 5), 0);
  sock_close(&r_, server);
  const std::string expected =
      "head;" + content + ";middle;" + content.substr(kOffset, kSlice) + ";tail";
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].got.size(), expected.size());
  EXPECT_EQ(first_difference(conns_[client].got, expected), expected.size());
  EXPECT_TRUE(conns_[client].eof);
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_PEER);
}

// sock_close sends close_notify after the queued data (OpenSSL's client sees it, not only the
// TCP FIN), and the engine's client reads it as EOF.
class CloseTest : public LayerTest {
 protected:
  void on_server_plaintext(int fd, const char* data, std::size_t length) override {
    if (std::string(data, length).find("quit") != std::string::npos) {
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      sock_close(&r_, fd);
    }
  }
};

TEST_F(CloseTest, CloseSendsCloseNotifyAfterTheQueuedData) {
  TlsClientConfig config(test_pki().ca);
  TlsClient peer(config, listener_.port, "localhost");
  peer.send("quit");
  ASSERT_TRUE(run_until(&r_, [&] { return !peer.pump(); }));
  EXPECT_FALSE(peer.failed()) << peer.error();
  EXPECT_EQ(peer.received(), "bye");
  EXPECT_TRUE(peer.close_notify_received());
  ASSERT_EQ(accepted_.size(), 1u);
  ASSERT_TRUE(run_until_closed(accepted_[0]));
  EXPECT_EQ(conns_[accepted_[0]].reason, SOCK_CLOSE_LOCAL);
}

TEST_F(CloseTest, EngineClientReadsCloseNotifyAsEof) {
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_EQ(sock_write(client, "quit", 4), 0);
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].got, "bye");
  EXPECT_TRUE(conns_[client].eof);
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_PEER);
  EXPECT_TRUE(log_.empty()) << log_.front();
}

// A close_notify from the peer, on a TCP connection it keeps open, reads as EOF (sock_read -1,
// errno 0) after the data before it; the server then closes, answering with its own.
TEST_F(LayerTest, PeerCloseNotifyReadsAsEof) {
  echo_ = false;
  TlsClientConfig config(test_pki().ca);
  TlsClient peer(config, listener_.port, "localhost");
  peer.send("last words");
  ASSERT_TRUE(run_until(&r_, [&] {
    peer.pump();
    return accepted_.size() == 1 && conns_[accepted_[0]].got == "last words";
  }));
  const int server = accepted_[0];
  EXPECT_FALSE(conns_[server].eof);
  peer.shutdown();
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_TRUE(conns_[server].eof);
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_PEER);
  ASSERT_TRUE(run_until(&r_, [&] { return !peer.pump(); }));
  EXPECT_FALSE(peer.failed()) << peer.error();
  EXPECT_TRUE(peer.close_notify_received());
}

// fd's TLS state queries fail with EBADF: it is open, with no TLS layer.
void expect_not_tls(int fd) {
  errno = 0;
  EXPECT_EQ(sock_tls_established(fd), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(sock_tls_resumed(fd), -1);
  EXPECT_EQ(errno, EBADF);
}

// sock_tls_established, sock_tls_alpn and sock_tls_resumed on both ends, before and after the
// handshake, and for an fd without TLS.
TEST_F(LayerTest, StateQueriesFollowTheHandshake) {
  SockTLS* alpn_client = sock_tls_client_new(test_pki().ca.c_str());
  ASSERT_NE(alpn_client, nullptr);
  ASSERT_EQ(sock_tls_set_alpn(alpn_client, "h2,http/1.1"), 0);
  const int client = connect_tls("localhost", alpn_client);
  sock_tls_free(alpn_client);  // the connection holds its own reference
  EXPECT_EQ(sock_tls_established(client), 0);
  EXPECT_EQ(sock_tls_alpn(client), nullptr);
  EXPECT_EQ(sock_tls_resumed(client), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() == 1; }));
  const int server = accepted_[0];
  EXPECT_EQ(sock_tls_established(server), 0);
  ASSERT_TRUE(run_until_established(client, server));
  ASSERT_NE(sock_tls_alpn(client), nullptr);
  EXPECT_STREQ(sock_tls_alpn(client), "http/1.1");
  ASSERT_NE(sock_tls_alpn(server), nullptr);
  EXPECT_STREQ(sock_tls_alpn(server), "http/1.1");
  EXPECT_EQ(sock_tls_resumed(client), 0);
  EXPECT_EQ(sock_tls_resumed(server), 0);

  // A connection without layers (the listener's would get TLS).
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(&r_, pair[0]), 0);
  expect_not_tls(pair[0]);
  EXPECT_EQ(sock_tls_alpn(pair[0]), nullptr);
  sock_force_close(&r_, pair[0]);
  close(pair[1]);
  close_both(client, server);
}

// The per-fd queries keep the engine's errno: EPERM off the owner thread (sock_tls.h), not
// EBADF, which says "no TLS"; EBADF for a closed fd and for layers none of which is TLS.
TEST_F(LayerTest, StateQueriesOffTheOwnerThreadGiveEperm) {
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_TRUE(run_until_established(client, server));
  int established = 0, established_errno = 0, resumed = 0, resumed_errno = 0;
  std::thread([&] {
    errno = 0;
    established = sock_tls_established(client);
    established_errno = errno;
    errno = 0;
    resumed = sock_tls_resumed(client);
    resumed_errno = errno;
  }).join();
  EXPECT_EQ(established, -1);
  EXPECT_EQ(established_errno, EPERM);
  EXPECT_EQ(resumed, -1);
  EXPECT_EQ(resumed_errno, EPERM);

  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(&r_, pair[0]), 0);
  sockTLC plain = {};  // a layer that is not TLS
  ASSERT_EQ(sock_tlc_add(pair[0], &plain), 0);
  expect_not_tls(pair[0]);
  sock_force_close(&r_, pair[0]);
  close(pair[1]);
  errno = 0;
  EXPECT_EQ(sock_tls_established(pair[0]), -1);  // closed
  EXPECT_EQ(errno, EBADF);
  close_both(client, server);
}

// A client that asked for 512-byte records (max_fragment_length, RFC 6066 4), which OpenSSL's
// server grants under TLS 1.3 as under 1.2, gets no record longer: its OpenSSL fails the
// connection with record_overflow on one. A 64 KiB echo (records of up to 16 KB written)
// comes back whole.
TEST_F(LayerTest, MaxFragmentLengthAskedForIsHonoured) {
  for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version == TLS1_2_VERSION ? "TLS 1.2" : "TLS 1.3");
    TlsClientConfig config(test_pki().ca, "", version);
    ASSERT_EQ(SSL_CTX_set_tlsext_max_fragment_length(config.ctx(),
                                                     TLSEXT_max_fragment_length_512), 1);
    TlsClient peer(config, listener_.port, "localhost");
    const std::string data = pattern(std::size_t{64} << 10, 31);
    ASSERT_TRUE(round_trip(peer, data)) << peer.error();
    EXPECT_FALSE(peer.failed()) << peer.error();
    EXPECT_EQ(peer.version(), version);
    EXPECT_EQ(peer.received().size(), data.size());
    EXPECT_EQ(first_difference(peer.received(), data), data.size());
    const int server = accepted_.back();
    EXPECT_FALSE(conns_[server].closed) << conns_[server].tls_error;
  }
  EXPECT_TRUE(log_.empty()) << log_.front();
}

// A session resumed from the server's ticket shows on the server side (TLS 1.2 and 1.3).
class ResumedTest : public LayerTest, public ::testing::WithParamInterface<int> {};

TEST_P(ResumedTest, ServerSeesTheResumedSession) {
  TlsClientConfig config(test_pki().ca, "http/1.1", GetParam());
  testing_support::Session session;
  for (int i = 0; i < 2; ++i) {
    TlsClient peer(config, listener_.port, "localhost", session.get());
    ASSERT_TRUE(round_trip(peer, "ping")) << peer.error();
    ASSERT_EQ(peer.received(), "ping") << peer.error();
    EXPECT_EQ(peer.version(), GetParam());
    EXPECT_EQ(peer.alpn(), "http/1.1");
    EXPECT_EQ(peer.resumed(), i == 1);
    const int server = accepted_.back();
    EXPECT_EQ(conns_[server].resumed, i == 1 ? 1 : 0);
    EXPECT_EQ(conns_[server].alpn, "http/1.1");
    session = peer.session();
    ASSERT_TRUE(session && SSL_SESSION_is_resumable(session.get()));
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, ResumedTest, ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION),
                         [](const auto& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12" : "Tls13";
                         });

// The client's certificate checks: a failure closes the client with SOCK_CLOSE_ERROR and the
// reason in sock_tls_error() (in on_close) and the log, counts a certificate failure, and the
// held writes never leave (the server reads nothing).
struct VerifyCase {
  const char* name;
  const testing_support::TlsFiles& (*files)();
  const char* server_name;
  const char* reason;  // nullptr: the check passes
};

class VerifyTest : public LayerTest, public ::testing::WithParamInterface<VerifyCase> {};

TEST_P(VerifyTest, ClientChecksTheServerCertificate) {
  const VerifyCase& c = GetParam();
  ASSERT_NO_FATAL_FAILURE(serve(c.files()));
  const SockTLSStats before = tls_stats();
  const int client = connect_tls(c.server_name);
  ASSERT_EQ(sock_write(client, "secret", 6), 0);
  if (!c.reason) {
    ASSERT_TRUE(run_until_received(client, 6));
    EXPECT_EQ(conns_[client].got, "secret");
    EXPECT_EQ(tls_stats().handshakes - before.handshakes, 2u);
    close_both(client, accepted_.at(0));
    return;
  }
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_ERROR);
  EXPECT_NE(conns_[client].tls_error.find(c.reason), std::string::npos) << conns_[client].tls_error;
  EXPECT_NE(conns_[client].tls_error.find("certificate verify failed"), std::string::npos)
      << conns_[client].tls_error;
  ASSERT_FALSE(log_.empty());
  EXPECT_EQ(log_[0], "fd " + std::to_string(client) + ": " + conns_[client].tls_error);
  ASSERT_EQ(accepted_.size(), 1u);
  const int server = accepted_[0];
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].got, "");
  const SockTLSStats after = tls_stats();
  EXPECT_EQ(after.failures[SOCK_TLS_FAIL_CERTIFICATE] - before.failures[SOCK_TLS_FAIL_CERTIFICATE],
            1u);
  // The client closed at once (no alert): the server saw its peer leave mid-handshake.
  EXPECT_EQ(after.failures[SOCK_TLS_FAIL_CLOSED] - before.failures[SOCK_TLS_FAIL_CLOSED], 1u);
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_PEER);
  EXPECT_EQ(after.handshakes, before.handshakes);
}

const testing_support::TlsFiles& localhost_files() { return test_pki().localhost; }
const testing_support::TlsFiles& expired_files() { return test_pki().expired; }
const testing_support::TlsFiles& self_signed_files() { return test_pki().self_signed; }

INSTANTIATE_TEST_SUITE_P(
    Certificates, VerifyTest,
    ::testing::Values(VerifyCase{"DnsName", localhost_files, "localhost", nullptr},
                      VerifyCase{"IpAddress", localhost_files, "127.0.0.1", nullptr},
                      VerifyCase{"Expired", expired_files, "localhost", "certificate has expired"},
                      VerifyCase{"OtherName", localhost_files, "other.example",
                                 "hostname mismatch"},
                      VerifyCase{"OtherIp", localhost_files, "127.0.0.2", "IP address mismatch"},
                      VerifyCase{"Untrusted", self_signed_files, "localhost", "self-signed"}),
    [](const auto& info) { return std::string(info.param.name); });

// Reads smaller than a record: OpenSSL keeps the rest of a decrypted record, and the engine
// asks the layer again until it has given everything.
TEST_F(LayerTest, SmallReadsGetEveryByte) {
  for (const std::size_t read_size : {std::size_t{1}, std::size_t{7}, kRecord - 1}) {
    SCOPED_TRACE(read_size);
    read_size_ = read_size;
    int server = -1;
    const int client = connect_pair(&server);
    const std::string data = pattern(read_size == 1 ? 40000 : 3 * kRecord + 11, 4);
    ASSERT_EQ(sock_write(client, data.data(), data.size()), 0);
    ASSERT_TRUE(run_until_received(client, data.size()));
    EXPECT_EQ(first_difference(conns_[client].got, data), data.size());
    close_both(client, server);
  }
}

// Data and the close_notify behind it arriving together: every byte is read before the EOF.
TEST_F(LayerTest, CloseNotifyRightBehindDataEndsTheStreamAfterIt) {
  echo_ = false;
  read_size_ = 1000;
  TlsClientConfig config(test_pki().ca);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(run_until(&r_, [&] { return !peer.pump() || peer.established(); }));
  const std::string data = pattern(5 * kRecord + 3, 6);
  peer.send(data);
  peer.shutdown();
  ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() == 1 && conns_[accepted_[0]].closed; }));
  const testing_support::TlsConn& server = conns_[accepted_[0]];
  EXPECT_EQ(server.got.size(), data.size());
  EXPECT_EQ(first_difference(server.got, data), data.size());
  EXPECT_TRUE(server.eof);
  EXPECT_EQ(server.reason, SOCK_CLOSE_PEER);
}

// Packets from sock_send_packet (the pool's memory, or a malloc'd buffer the record replaces)
// and .move buffers are encrypted like copies.
TEST_F(LayerTest, PacketsAndMovedBuffersAreByteExact) {
  echo_ = false;
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_TRUE(run_until_established(client, server));
  const std::string a = pattern(kRecord, 21), b = pattern(1000, 22), c = "c",
                    d = pattern(2 * kRecord + 5, 23);
  Packet* first = sock_checkout_packet();
  Packet* second = sock_checkout_packet();
  Packet* third = sock_checkout_packet();
  ASSERT_TRUE(first && second && third);
  std::memcpy(first->internal_memory, a.data(), a.size());
  first->length = static_cast<ssize_t>(a.size());
  second->buffer = std::malloc(b.size());
  std::memcpy(second->buffer, b.data(), b.size());
  second->length = static_cast<ssize_t>(b.size());
  second->metadata.external = 1;
  std::memcpy(third->internal_memory, c.data(), c.size());
  third->length = 1;
  first->metadata.next = second;
  second->metadata.next = third;
  ASSERT_EQ(sock_send_packet(server, first), 0);
  char* moved = static_cast<char*>(std::malloc(d.size()));
  std::memcpy(moved, d.data(), d.size());
  ASSERT_EQ(sock_write2(.fd = server, .buffer = moved, .length = d.size(), .move = 1), 0);
  const std::string expected = a + b + c + d;
  ASSERT_TRUE(run_until_received(client, expected.size()));
  EXPECT_EQ(first_difference(conns_[client].got, expected), expected.size());
  EXPECT_EQ(conns_[client].got.size(), expected.size());
  close_both(client, server);
}

// A TLS 1.3 record of 16 KiB arriving a byte per segment is read whole and exact, with work
// linear in its size: each byte is copied aside once while the record is incomplete, not the
// whole partial record again at every segment (about 400 MB of copying for this record).
// Whole records behind it, one straddling two sends, still read as before.
TEST_F(LayerTest, ARecordTrickledAByteAtATimeIsReadWithLinearWork) {
  echo_ = false;
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(run_until(&r_, [&] {
    return !peer.pump() || (peer.established() && sealer.ready() && !accepted_.empty() &&
                            sock_tls_established(accepted_.back()) == 1);
  }));
  ASSERT_TRUE(peer.established() && sealer.ready()) << peer.error();
  const int server = accepted_.back();
  // Runs the loop until the server side has taken every byte from its socket.
  const auto run_until_taken = [&] {
    return run_until(&r_, [&] {
      int unread = -1;
      return conns_[server].closed || (ioctl(server, FIONREAD, &unread) == 0 && unread == 0);
    });
  };
  const std::string data = pattern(kRecord, 21);
  const std::string record = sealer.record(testing_support::kApplicationDataRecord, data);
  const uint64_t copied_before = tls::partial_record_bytes_copied();
  for (const char byte : record) {
    ASSERT_EQ(send(peer.fd(), &byte, 1, MSG_NOSIGNAL), 1);
    ASSERT_TRUE(run_until_taken());
    ASSERT_FALSE(conns_[server].closed) << conns_[server].tls_error;
  }
  ASSERT_TRUE(run_until_received(server, data.size()));
  EXPECT_EQ(first_difference(conns_[server].got, data), data.size());
  EXPECT_EQ(conns_[server].got.size(), data.size());
  const uint64_t copied = tls::partial_record_bytes_copied() - copied_before;
  // Each byte kept once, and the doublings of the buffer move at most as many again.
  EXPECT_LE(copied, 3 * record.size()) << "bytes copied for a record of " << record.size();

  // Then three records: the second split across two sends.
  std::string more;
  for (int i = 0; i < 3; ++i) more += sealer.record(testing_support::kApplicationDataRecord, data);
  const std::size_t cut = more.size() / 2;
  testing_support::write_all(peer.fd(), more.substr(0, cut));
  ASSERT_TRUE(run_until_taken());
  testing_support::write_all(peer.fd(), more.substr(cut));
  ASSERT_TRUE(run_until_received(server, 4 * data.size()));
  EXPECT_EQ(conns_[server].got, data + data + data + data);
  EXPECT_FALSE(conns_[server].closed) << conns_[server].tls_error;
}

// A packet larger than one record's plaintext cannot be sent: the connection fails, saying why.
TEST_F(LayerTest, OversizedPacketFailsTheConnection) {
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_TRUE(run_until_established(client, server));
  Packet* p = sock_checkout_packet();
  ASSERT_NE(p, nullptr);
  p->length = static_cast<ssize_t>(kRecord + 1);
  std::memset(p->internal_memory, 'x', kRecord + 1);
  const SockTLSStats before = tls_stats();
  ASSERT_EQ(sock_send_packet(server, p), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return conns_[server].closed && conns_[client].closed; }));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  ASSERT_FALSE(log_.empty());
  EXPECT_NE(log_[0].find("BUFFER_FILE_READ_SIZE"), std::string::npos) << log_[0];
  EXPECT_NE(conns_[server].tls_error.find("BUFFER_FILE_READ_SIZE"), std::string::npos);
  EXPECT_EQ(conns_[client].got, "");
  // A record failure like any other (the client's end saw only the close).
  EXPECT_EQ(tls_stats().records_failed, before.records_failed + 1);
}

// sock_close before the handshake completes: the held writes still go out, after it, then
// close_notify (on either end).
TEST_F(LayerTest, CloseDuringTheHandshakeSendsTheHeldWritesFirst) {
  echo_ = false;
  const int client = connect_tls();
  const std::string data = pattern(2 * kRecord + 9, 12);
  ASSERT_EQ(sock_write(client, data.data(), data.size()), 0);
  sock_close(&r_, client);
  ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() == 1 && conns_[accepted_[0]].closed; }));
  // The server's close reason is not checked: the client closes its socket without reading
  // what the server sent after the handshake (a TLS 1.3 session ticket), so its kernel may
  // answer the server's last record with a reset.
  const testing_support::TlsConn& server = conns_[accepted_[0]];
  EXPECT_EQ(first_difference(server.got, data), data.size());
  EXPECT_EQ(server.got.size(), data.size());
  EXPECT_TRUE(server.eof);
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_LOCAL);
}

class ServerClosesAtOnceTest : public LayerTest {
 protected:
  void on_accept(int fd) override {
    LayerTest::on_accept(fd);
    EXPECT_EQ(sock_write(fd, "busy, bye", 9), 0);
    sock_close(&r_, fd);
  }
};

TEST_F(ServerClosesAtOnceTest, ServerCloseDuringTheHandshakeSendsTheHeldWritesFirst) {
  const int client = connect_tls();
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].got, "busy, bye");
  EXPECT_TRUE(conns_[client].eof);
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_PEER);
  EXPECT_TRUE(log_.empty()) << log_.front();
}

}  // namespace
