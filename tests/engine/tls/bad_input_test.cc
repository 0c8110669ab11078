// Bad input on TLS connections (engine/tls/layer.cc's failure paths): whatever a peer sends,
// the server closes that connection with a reason (SOCK_CLOSE_ERROR or SOCK_CLOSE_TIMEOUT,
// sock_tls_error() and the log), counts it in sock_tls_stats, and goes on serving others.
// Peers: plain sockets writing raw bytes, OpenSSL's client (and records sealed with its keys:
// client_sealer.h), the engine's client.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <set>
#include <string>

#include "engine/libsock.h"
#include "engine/reactor.h"
#include "engine/tls/sock_tls.h"
#include "tests/engine/tls/client_sealer.h"
#include "tests/engine/tls/tls_fixture.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/run_until.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::ClientSealer;
using testing_support::kAlertRecord;
using testing_support::kApplicationDataRecord;
using testing_support::kHandshakeRecord;
using testing_support::run_until;
using testing_support::test_pki;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;
using testing_support::TlsFixture;

// A TLS record header: content type, version 3.1 (as ClientHellos carry), length.
std::string record_header(uint8_t type, std::size_t length) {
  return std::string{static_cast<char>(type), 3, 1, static_cast<char>(length >> 8),
                     static_cast<char>(length & 0xff)};
}
// RFC 8446 5.2: a record longer than this is an error (record_overflow).
constexpr std::size_t kMaxCiphertext = 16384 + 256;
// The log's reasons for the layer's two limits on records that carry no application data.
constexpr char kNoDataReason[] = "too many records without application data";
constexpr char kAnswersReason[] = "too many records answered while the peer reads none";

class BadInputTest : public TlsFixture {
 protected:
  // A plain TCP client that writes `bytes`; returns it and sets *server to the server side.
  int send_raw(const std::string& bytes, int* server) {
    const int raw = connect_and_accept(server);
    testing_support::write_all(raw, bytes);
    return raw;
  }

  // Runs until the server side closed and the raw client saw its close.
  void expect_closed(int raw, int server, SockCloseReason reason) {
    std::string got;
    EXPECT_TRUE(run_until(&r_, [&] {
      return conns_[server].closed && !testing_support::drain(raw, &got);
    })) << "the server kept the connection";
    EXPECT_EQ(conns_[server].reason, reason);
    EXPECT_EQ(conns_[server].got, "");
    close(raw);
  }

  // A well-behaved client is still served.
  void expect_still_serving() {
    int server = -1;
    const int client = connect_pair(&server);
    ASSERT_EQ(sock_write(client, "still there?", 12), 0);
    ASSERT_TRUE(run_until_received(client, 12));
    EXPECT_EQ(conns_[client].got, "still there?");
    sock_close(&r_, client);
    EXPECT_TRUE(run_until(&r_, [&] { return conns_[server].closed; }));
  }

  // The change of one failure counter since `before`, and that of the others (which must not
  // move).
  static uint64_t moved(const SockTLSStats& before, SockTLSFailure reason) {
    return tls_stats().failures[reason] - before.failures[reason];
  }
  static uint64_t moved_except(const SockTLSStats& before, SockTLSFailure reason) {
    const SockTLSStats now = tls_stats();
    uint64_t sum = 0;
    for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) {
      if (i != reason) sum += now.failures[i] - before.failures[i];
    }
    return sum;
  }

  // Runs until `peer` (whose records `sealer` can seal) and the server side completed the
  // handshake. Returns the server side's fd, or -1 with a test failure.
  int establish(TlsClient& peer, const ClientSealer& sealer) {
    const bool done = run_until(&r_, [&] {
      return !peer.pump() || (peer.established() && sealer.ready() && !accepted_.empty() &&
                              sock_tls_established(accepted_.back()) == 1);
    });
    EXPECT_TRUE(done && peer.established() && sealer.ready()) << peer.error();
    return done && peer.established() && sealer.ready() ? accepted_.back() : -1;
  }

  void expect_logged(int fd, const std::string& reason_start) {
    ASSERT_EQ(log_.size(), 1u);
    EXPECT_EQ(log_[0].rfind("fd " + std::to_string(fd) + ": " + reason_start, 0), 0u) << log_[0];
  }
};

// A plain HTTP request on the TLS port: not a ClientHello, a protocol failure.
TEST_F(BadInputTest, PlainHttpRequestIsAProtocolFailure) {
  const SockTLSStats before = tls_stats();
  int server = -1;
  const int raw = send_raw("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", &server);
  expect_closed(raw, server, SOCK_CLOSE_ERROR);
  EXPECT_EQ(conns_[server].tls_error.rfind("handshake failed", 0), 0u) << conns_[server].tls_error;
  expect_logged(server, "handshake failed");
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_PROTOCOL), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_PROTOCOL), 0u);
  expect_still_serving();
}

TEST_F(BadInputTest, GarbageInsteadOfClientHelloIsAProtocolFailure) {
  const SockTLSStats before = tls_stats();
  int server = -1;
  std::string garbage = testing_support::pattern(3000, 5);
  garbage[0] = 0x7f;  // not a record type
  const int raw = send_raw(garbage, &server);
  expect_closed(raw, server, SOCK_CLOSE_ERROR);
  EXPECT_EQ(conns_[server].tls_error.rfind("handshake failed", 0), 0u) << conns_[server].tls_error;
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_PROTOCOL), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_PROTOCOL), 0u);
  expect_still_serving();
}

// Handshake records longer than the protocol allows: one just over the limit, sent whole (refused
// once read), and one with the largest length field (refused at its header, before its body).
TEST_F(BadInputTest, OversizedRecordIsAProtocolFailure) {
  for (const auto& bytes :
       {record_header(kHandshakeRecord, kMaxCiphertext + 1) + std::string(kMaxCiphertext + 1, 'x'),
        record_header(kHandshakeRecord, 0xffff) + std::string(100, 'x')}) {
    const SockTLSStats before = tls_stats();
    int server = -1;
    const int raw = send_raw(bytes, &server);
    expect_closed(raw, server, SOCK_CLOSE_ERROR);
    EXPECT_EQ(moved(before, SOCK_TLS_FAIL_PROTOCOL), 1u);
    EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_PROTOCOL), 0u);
  }
  expect_still_serving();
}

// Part of a record, then EOF: the peer left mid-handshake (a close, not a protocol error).
TEST_F(BadInputTest, TruncatedRecordThenEofClosesMidHandshake) {
  const SockTLSStats before = tls_stats();
  int server = -1;
  const int raw = send_raw(record_header(kHandshakeRecord, 200) + std::string(50, 'x'), &server);
  run_iterations(3);
  EXPECT_FALSE(conns_[server].closed) << "a partial record is no reason to close";
  ASSERT_EQ(shutdown(raw, SHUT_WR), 0);
  expect_closed(raw, server, SOCK_CLOSE_PEER);
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_CLOSED), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_CLOSED), 0u);
  expect_still_serving();
}

// A client that stops mid-handshake is closed by the handshake deadline.
TEST_F(BadInputTest, StalledHandshakeIsClosedByTheDeadline) {
  ASSERT_EQ(sock_tls_set_handshake_timeout(server_tls_, 100), 0);
  const SockTLSStats before = tls_stats();
  int server = -1;
  const int raw = send_raw(record_header(kHandshakeRecord, 200) + std::string(50, 'x'), &server);
  expect_closed(raw, server, SOCK_CLOSE_TIMEOUT);
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_TIMEOUT), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_TIMEOUT), 0u);
  expect_still_serving();
}

// The client has the same deadline: a server that never answers its ClientHello (a listener
// that never accepts) is given up on.
TEST_F(BadInputTest, ClientGivesUpOnAServerThatNeverAnswers) {
  ASSERT_EQ(sock_tls_set_handshake_timeout(client_tls_, 100), 0);
  const testing_support::Listener silent = testing_support::listen_loopback();
  const SockTLSStats before = tls_stats();
  const int client = connect_tls("localhost", nullptr, silent.port);
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_TIMEOUT);
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_TIMEOUT), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_TIMEOUT), 0u);
  close(silent.fd);
}

// The deadline ends with the handshake: an established connection outlives it.
TEST_F(BadInputTest, EstablishedConnectionOutlivesTheHandshakeDeadline) {
  constexpr unsigned kDeadlineMs = 100;
  ASSERT_EQ(sock_tls_set_handshake_timeout(server_tls_, kDeadlineMs), 0);
  int server = -1;
  const int client = connect_pair(&server);
  ASSERT_TRUE(run_until_established(client, server));
  const auto later = std::chrono::steady_clock::now() + std::chrono::milliseconds(3 * kDeadlineMs);
  ASSERT_TRUE(run_until(
      &r_, [&] { return conns_[server].closed || std::chrono::steady_clock::now() > later; }));
  EXPECT_FALSE(conns_[server].closed) << "closed by the handshake deadline after the handshake";
  ASSERT_EQ(sock_write(client, "ok", 2), 0);
  ASSERT_TRUE(run_until_received(client, 2));
  EXPECT_EQ(conns_[client].got, "ok");
}

// A bad record on an established connection fails it (a record failure, not a handshake one).
TEST_F(BadInputTest, OversizedRecordAfterTheHandshakeFailsTheConnection) {
  TlsClientConfig config(test_pki().ca);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(round_trip(peer, "ping"));
  const int server = accepted_.at(0);
  const SockTLSStats before = tls_stats();
  testing_support::write_all(
      peer.fd(), record_header(kApplicationDataRecord, kMaxCiphertext + 1) + std::string(100, 'x'));
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  EXPECT_EQ(conns_[server].tls_error.rfind("bad record", 0), 0u) << conns_[server].tls_error;
  expect_logged(server, "bad record");
  EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_REASONS), 0u);
  expect_still_serving();
}

// TLS 1.2 renegotiation is refused: the client's attempt fails, the server survives it and
// serves others.
TEST_F(BadInputTest, RenegotiationIsRefused) {
  TlsClientConfig config(test_pki().ca, "", TLS1_2_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(round_trip(peer, "before")) << peer.error();
  ASSERT_TRUE(peer.renegotiate());
  ASSERT_TRUE(run_until(&r_, [&] { return !peer.pump() || !peer.renegotiating(); }));
  EXPECT_TRUE(peer.failed()) << "the renegotiation completed";
  EXPECT_NE(peer.error().find("no renegotiation"), std::string::npos) << peer.error();
  const int server = accepted_.at(0);
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  expect_still_serving();
}

// A TLS 1.3 KeyUpdate is a normal post-handshake message: answered, and data flows after it.
TEST_F(BadInputTest, KeyUpdateIsHandled) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(round_trip(peer, "before;")) << peer.error();
  ASSERT_TRUE(peer.key_update());
  ASSERT_TRUE(round_trip(peer, "after")) << peer.error();
  EXPECT_FALSE(conns_[accepted_.at(0)].closed);
  EXPECT_TRUE(log_.empty());
}

// A peer that floods KeyUpdates asking for answers, and reads none, cannot pile up queued
// answers: one is owed at a time, and past 32 records with no application data between them
// the connection fails with a reason.
TEST_F(BadInputTest, KeyUpdateFloodFailsTheConnection) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(round_trip(peer, "before;")) << peer.error();
  const int server = accepted_.at(0);
  const SockTLSStats before = tls_stats();
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(peer.key_update());
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  expect_logged(server, kNoDataReason);
  EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
  expect_still_serving();
}

// TLS 1.3 records the layer opens itself (after the hand-over from OpenSSL) that carry no
// application data: empty ones, 22 bytes each, yield nothing for sock_read to return, so
// without a limit a peer streaming them keeps one sock_read from returning. Past 32 in a row
// the connection fails, as OpenSSL's own record layer does (and the "x" behind them is never
// read).
TEST_F(BadInputTest, EmptyRecordsPastTheLimitFailTheConnection) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  const SockTLSStats before = tls_stats();
  std::string bytes;
  for (int i = 0; i < 33; ++i) bytes += sealer.record(kApplicationDataRecord, "");
  ASSERT_EQ(bytes.size(), 33u * 22);
  testing_support::write_all(peer.fd(), bytes + sealer.record(kApplicationDataRecord, "x"));
  ASSERT_TRUE(run_until_received(server, 1));
  EXPECT_TRUE(conns_[server].closed) << "33 empty records were ignored";
  EXPECT_EQ(conns_[server].got, "");
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  expect_logged(server, kNoDataReason);
  EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
  expect_still_serving();
}

// Up to the limit, empty records are harmless (a peer may send some, as padding of the
// stream): the data behind them is read and the connection stays.
TEST_F(BadInputTest, EmptyRecordsUpToTheLimitAreIgnored) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  std::string bytes;
  for (int round = 0; round < 2; ++round) {  // the count starts again after data
    for (int i = 0; i < 32; ++i) bytes += sealer.record(kApplicationDataRecord, "");
    bytes += sealer.record(kApplicationDataRecord, "x");
  }
  testing_support::write_all(peer.fd(), bytes);
  ASSERT_TRUE(run_until_received(server, 2));
  EXPECT_FALSE(conns_[server].closed) << conns_[server].tls_error;
  EXPECT_EQ(conns_[server].got, "xx");
  EXPECT_TRUE(log_.empty());
}

// Empty records and post-handshake messages count together: a peer cannot alternate them to
// stay under each limit.
TEST_F(BadInputTest, EmptyRecordsAndKeyUpdatesCountTogether) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  std::string bytes;
  for (int i = 0; i < 17; ++i) {
    bytes += sealer.key_update();
    bytes += sealer.record(kApplicationDataRecord, "");
  }
  testing_support::write_all(peer.fd(), bytes + sealer.record(kApplicationDataRecord, "x"));
  ASSERT_TRUE(run_until_received(server, 1));
  EXPECT_TRUE(conns_[server].closed) << "34 records without data were accepted";
  EXPECT_EQ(conns_[server].got, "");
  expect_logged(server, kNoDataReason);
}

// user_canceled (RFC 8446 6.1) is a closure alert, not an error: a TLS 1.3 peer may send it,
// at either level, before its close_notify (JDK 11 does at every close). It is skipped, as
// OpenSSL, BoringSSL and LibreSSL skip it, so the data before it is read and the
// close_notify behind it ends the stream; it counts as a record without data.
TEST_F(BadInputTest, UserCanceledIsSkippedAndTheDataBeforeItRead) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  const SockTLSStats before = tls_stats();
  const std::string warning_canceled("\x01\x5a", 2), fatal_canceled("\x02\x5a", 2);
  std::string bytes = sealer.record(kApplicationDataRecord, "data");  // in sequence order
  bytes += sealer.record(kAlertRecord, warning_canceled);
  bytes += sealer.record(kAlertRecord, fatal_canceled);
  bytes += sealer.record(kAlertRecord, std::string("\x01\x00", 2));  // close_notify
  testing_support::write_all(peer.fd(), bytes);
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].got, "data");
  EXPECT_TRUE(conns_[server].eof);
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_PEER) << conns_[server].tls_error;
  EXPECT_EQ(tls_stats().records_failed, before.records_failed);
  EXPECT_TRUE(log_.empty()) << log_.front();
}

// ... and counts against the limit on records without application data, like an empty one.
TEST_F(BadInputTest, UserCanceledAlertsPastTheLimitFailTheConnection) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  std::string bytes;
  for (int i = 0; i < 33; ++i) bytes += sealer.record(kAlertRecord, std::string("\x01\x5a", 2));
  bytes += sealer.record(kApplicationDataRecord, "x");
  testing_support::write_all(peer.fd(), bytes);
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].got, "");
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  expect_logged(server, kNoDataReason);
}

// TLS 1.2: OpenSSL answers each renegotiation ClientHello with a no_renegotiation alert, and
// goes on reading; one record may hold many ClientHellos. Each answer is a record queued for a
// peer that may read none: past 32 the connection fails, application data among them or not.
TEST_F(BadInputTest, RenegotiationFloodFailsTheConnection) {
  const std::string client_hello("\x01\x00\x00\x00", 4);  // the refusal reads no further
  for (const bool one_record : {false, true}) {
    SCOPED_TRACE(one_record ? "33 ClientHellos in one record" : "33 records of one ClientHello");
    log_.clear();
    TlsClientConfig config(test_pki().ca, "", TLS1_2_VERSION);
    ClientSealer sealer(config);
    TlsClient peer(config, listener_.port, "localhost");
    const int server = establish(peer, sealer);
    ASSERT_GE(server, 0);
    const SockTLSStats before = tls_stats();
    std::string bytes;
    std::string hellos;
    for (int i = 0; i < 33; ++i) hellos += client_hello;
    if (one_record) {
      bytes = sealer.record(kHandshakeRecord, hellos);
    } else {
      for (int i = 0; i < 33; ++i) bytes += sealer.record(kHandshakeRecord, client_hello);
    }
    testing_support::write_all(peer.fd(), bytes + sealer.record(kApplicationDataRecord, "x"));
    ASSERT_TRUE(run_until_received(server, 1));
    EXPECT_TRUE(conns_[server].closed) << "33 ClientHellos answered with data behind them";
    EXPECT_EQ(conns_[server].got, "");
    EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
    expect_logged(server, kAnswersReason);
    EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
  }
  expect_still_serving();
}

// The answers are counted until the peer has taken all that was queued before them, not until
// it sends data: while the server's queue waits on a peer that reads nothing, batches of 20
// ClientHellos each followed by a byte of data fail the connection at the second batch.
TEST_F(BadInputTest, RenegotiationAnswersCountWhileThePeerReadsNothing) {
  TlsClientConfig config(test_pki().ca, "", TLS1_2_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  // Small kernel buffers on both ends, so that the kernel takes little of a response the peer
  // never reads and the rest stays queued (below the high watermark: reading goes on).
  testing_support::set_sndbuf(server, 4096);
  const int rcvbuf = 4096;
  ASSERT_EQ(setsockopt(peer.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
  const std::string response(512 * 1024, 'r');
  ASSERT_EQ(sock_write(server, response.data(), response.size()), 0);
  run_iterations(3);
  ASSERT_GT(sock_pending(server), 0) << "the kernel took the whole response";
  const std::string client_hello("\x01\x00\x00\x00", 4);
  for (std::size_t batch = 1; batch <= 2; ++batch) {
    std::string bytes;
    for (int i = 0; i < 20; ++i) bytes += sealer.record(kHandshakeRecord, client_hello);
    testing_support::write_all(peer.fd(), bytes + sealer.record(kApplicationDataRecord, "x"));
    ASSERT_TRUE(run_until_received(server, batch));
    if (conns_[server].closed) break;
  }
  EXPECT_TRUE(conns_[server].closed) << "40 answers queued for a peer that reads nothing";
  EXPECT_EQ(conns_[server].got, "x");
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  expect_logged(server, kAnswersReason);
}

// A peer that takes what the server sends may be refused any number of times: the answers
// never pile up.
TEST_F(BadInputTest, RenegotiationAttemptsOfAReadingPeerAreEachAnswered) {
  TlsClientConfig config(test_pki().ca, "", TLS1_2_VERSION);
  ClientSealer sealer(config);
  TlsClient peer(config, listener_.port, "localhost");
  const int server = establish(peer, sealer);
  ASSERT_GE(server, 0);
  const std::string client_hello("\x01\x00\x00\x00", 4);
  // A warning alert record under TLS 1.2 AES-GCM: header, explicit nonce, alert, tag.
  constexpr std::size_t kAlertBytes = 5 + 8 + 2 + 16;
  std::string got;
  for (std::size_t round = 1; round <= 40; ++round) {
    testing_support::write_all(peer.fd(), sealer.record(kHandshakeRecord, client_hello));
    ASSERT_TRUE(run_until(&r_, [&] {
      testing_support::drain(peer.fd(), &got);
      return got.size() >= round * kAlertBytes || conns_[server].closed;
    }));
    ASSERT_FALSE(conns_[server].closed) << "round " << round << ": " << conns_[server].tls_error;
  }
  EXPECT_EQ(got.size(), 40 * kAlertBytes);
  EXPECT_TRUE(log_.empty());
}

// The log callback runs as a connection fails. sock_tls.h asks it not to close the fd (the
// library closes it right after), but one that does so anyway while the layer reads finds the
// failure complete: the layer touches nothing of the connection after the call, and the
// failure is counted once, as what it was.
class ClosingLogTest : public BadInputTest {
 protected:
  void SetUp() override {
    BadInputTest::SetUp();
    ASSERT_EQ(sock_tls_set_log(server_tls_, close_from_log, this), 0);
  }
  static void close_from_log(int fd, const char* reason, void* udata) {
    auto* self = static_cast<ClosingLogTest*>(udata);
    self->log_.push_back("fd " + std::to_string(fd) + ": " + reason);
    sock_force_close(&self->r_, fd);
  }
};

TEST_F(ClosingLogTest, ACloseFromTheLogAfterAFailedHandshakeIsSafe) {
  const SockTLSStats before = tls_stats();
  int server = -1;
  const int raw = send_raw("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", &server);
  expect_closed(raw, server, SOCK_CLOSE_LOCAL);
  EXPECT_EQ(conns_[server].tls_error.rfind("handshake failed", 0), 0u) << conns_[server].tls_error;
  expect_logged(server, "handshake failed");
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_PROTOCOL), 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_PROTOCOL), 0u) << "counted as closed too";
  expect_still_serving();
}

// Both record paths: TLS 1.2 (OpenSSL's) and TLS 1.3 (the layer's own, after the hand-over).
TEST_F(ClosingLogTest, ACloseFromTheLogAfterABadRecordIsSafe) {
  for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version == TLS1_2_VERSION ? "TLS 1.2" : "TLS 1.3");
    log_.clear();
    TlsClientConfig config(test_pki().ca, "", version);
    TlsClient peer(config, listener_.port, "localhost");
    ASSERT_TRUE(round_trip(peer, "ping")) << peer.error();
    const int server = accepted_.back();
    const SockTLSStats before = tls_stats();
    const std::string too_long = record_header(kApplicationDataRecord, kMaxCiphertext + 1);
    testing_support::write_all(peer.fd(), too_long + std::string(100, 'x'));
    ASSERT_TRUE(run_until_closed(server));
    EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_LOCAL);
    expect_logged(server, "bad record");
    EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
    EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_REASONS), 0u);
  }
  expect_still_serving();
}

// A bad record right behind the client's Finished, in the same read: the TLS 1.3 layer opens it
// in the call that completes the handshake, just after it took over from OpenSSL.
TEST_F(ClosingLogTest, ACloseFromTheLogAfterABadRecordBehindTheHandshakeIsSafe) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  // Until the server's flight reached the client; then the server reads nothing more until
  // the client's Finished and the bad record both wait in its socket.
  ASSERT_TRUE(run_until(&r_, [&] {
    pollfd p = {peer.fd(), POLLIN, 0};
    return !accepted_.empty() && poll(&p, 1, 0) == 1;
  }));
  const int server = accepted_.back();
  paused_.insert(server);
  ASSERT_TRUE(peer.run([&] { return peer.established(); })) << peer.error();
  const SockTLSStats before = tls_stats();
  const std::string too_long = record_header(kApplicationDataRecord, kMaxCiphertext + 1);
  testing_support::write_all(peer.fd(), too_long + std::string(100, 'x'));
  resume_reading(server);
  ASSERT_TRUE(run_until_closed(server));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_LOCAL);
  expect_logged(server, "bad record");
  EXPECT_EQ(tls_stats().handshakes - before.handshakes, 1u);
  EXPECT_EQ(tls_stats().records_failed - before.records_failed, 1u);
  EXPECT_EQ(moved_except(before, SOCK_TLS_FAIL_REASONS), 0u);
  expect_still_serving();
}

// The reactor reads a clock the test steps (fake_clock.h), so no real time matters.
class ClockedTest : public BadInputTest {
 protected:
  void SetUp() override {
    BadInputTest::SetUp();
    clock_.install(&r_);
  }
  // Moves the clock by d, then runs the loop: its timer step sees the new time.
  void step(std::chrono::milliseconds d) {
    clock_.advance(d);
    for (int i = 0; i < 2; ++i) engine::Reactor::of(&r_, true)->run_once(0);
  }
  testing_support::FakeClock clock_;
};

// The handshake deadline is the configuration's timeout when the connection started
// (sock_tls.h: a change reaches connections started after it). The deadline armed then is
// cleared when the handshake completes, though the timeout was switched off meanwhile: the
// established connections outlive it.
TEST_F(ClockedTest, DeadlineArmedAtTheStartEndsWithTheHandshakeThoughTheTimeoutWentToZero) {
  int server = -1;
  const int client = connect_pair(&server);  // both ends armed with SOCK_TLS_HANDSHAKE_MS
  ASSERT_GE(server, 0);
  ASSERT_EQ(sock_tls_set_handshake_timeout(client_tls_, 0), 0);
  ASSERT_EQ(sock_tls_set_handshake_timeout(server_tls_, 0), 0);
  ASSERT_TRUE(run_until_established(client, server));
  step(std::chrono::milliseconds(2 * SOCK_TLS_HANDSHAKE_MS));
  ASSERT_EQ(sock_write(client, "ok", 2), 0);
  ASSERT_TRUE(run_until_received(client, 2));
  EXPECT_EQ(conns_[client].got, "ok");
  EXPECT_FALSE(conns_[client].closed) << "the client was closed by its handshake deadline";
  EXPECT_FALSE(conns_[server].closed) << "the server was closed by its handshake deadline";
}

// A connection started without a handshake deadline keeps the application's own deadline
// (docs/tls.md: "set the handshake timeout to 0 and keep your own") through the handshake,
// though the configuration's timeout was switched on meanwhile.
TEST_F(ClockedTest, ApplicationsDeadlineOutlivesTheHandshakeThoughTheTimeoutWasSwitchedOn) {
  constexpr std::chrono::milliseconds kOwn{5000};
  ASSERT_EQ(sock_tls_set_handshake_timeout(client_tls_, 0), 0);
  const int client = connect_tls();
  ASSERT_GE(client, 0);
  ASSERT_EQ(sock_set_deadline(client, static_cast<unsigned>(kOwn.count())), 0);
  ASSERT_EQ(sock_tls_set_handshake_timeout(client_tls_, SOCK_TLS_HANDSHAKE_MS), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return !accepted_.empty(); }));
  ASSERT_TRUE(run_until_established(client, accepted_.back()));
  step(kOwn / 2);
  ASSERT_FALSE(conns_[client].closed);
  step(kOwn);
  ASSERT_TRUE(run_until(&r_, [&] { return conns_[client].closed; }, std::chrono::seconds(2)))
      << "the application's deadline was cleared with the handshake";
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_TIMEOUT);
}

// A peer that trickles a record, a byte per third of the idle timeout: ciphertext arrives
// within every timeout, but plaintext only once the record is whole, three timeouts later.
// Received bytes are progress (the handshake deadline, not the idle timer, bounds a
// handshake): the connection stays open and reads the record; silence after it still times
// out.
class SlowPeerTest : public ClockedTest {
 protected:
  // Runs the loop, the clock standing still, until the server side has taken every byte
  // from its socket.
  bool run_until_taken(int server) {
    return run_until(&r_, [&] {
      int unread = -1;
      return conns_[server].closed || (ioctl(server, FIONREAD, &unread) == 0 && unread == 0);
    });
  }
};

TEST_F(SlowPeerTest, CiphertextWithoutPlaintextYetKeepsTheIdleTimerFromFiring) {
  constexpr std::chrono::milliseconds kTimeout{300};
  constexpr std::chrono::milliseconds kGap = kTimeout / 3;
  for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    SCOPED_TRACE(version == TLS1_2_VERSION ? "TLS 1.2" : "TLS 1.3");
    TlsClientConfig config(test_pki().ca, "", version);
    ClientSealer sealer(config);
    TlsClient peer(config, listener_.port, "localhost");
    const int server = establish(peer, sealer);
    ASSERT_GE(server, 0);
    ASSERT_EQ(sock_set_timeout(server, static_cast<unsigned>(kTimeout.count())), 0);
    const std::string record = sealer.record(kApplicationDataRecord, "ping");
    ASSERT_GT(record.size(), 20u);  // some 2 s of trickling: several timeouts
    for (const char byte : record) {
      step(kGap);
      ASSERT_FALSE(conns_[server].closed) << "closed while bytes kept arriving";
      ASSERT_EQ(send(peer.fd(), &byte, 1, MSG_NOSIGNAL), 1);
      ASSERT_TRUE(run_until_taken(server));
    }
    ASSERT_TRUE(run_until_received(server, 4));
    EXPECT_EQ(conns_[server].got, "ping");
    EXPECT_FALSE(conns_[server].closed);
    for (int i = 0; i < 10 && !conns_[server].closed; ++i) step(kGap);
    EXPECT_TRUE(conns_[server].closed) << "silence did not time out";
    EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_TIMEOUT);
  }
  EXPECT_TRUE(log_.empty()) << log_.front();
}

// The engine's TLS client against a plain server that echoes its ClientHello back: the
// client fails its handshake at once (no hang) and says why.
class PlainServerTest : public BadInputTest {
 protected:
  void SetUp() override {
    BadInputTest::SetUp();
    plain_ = testing_support::listen_loopback();
    ASSERT_EQ(reactor_add(&r_, plain_.fd), 0);
  }
  void on_data(struct Reactor* r, int fd) override {
    if (fd != plain_.fd && !plain_fds_.count(fd)) return BadInputTest::on_data(r, fd);
    if (fd == plain_.fd) {
      int c;
      while ((c = sock_accept(r, fd)) >= 0) plain_fds_.insert(c);
      return;
    }
    char buf[4096];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0)
      sock_write(fd, buf, static_cast<std::size_t>(n));
  }
  testing_support::Listener plain_;
  std::set<int> plain_fds_;
};

TEST_F(PlainServerTest, TlsClientOnAPlainPortFailsItsHandshake) {
  const SockTLSStats before = tls_stats();
  const int client = connect_tls("localhost", nullptr, plain_.port);
  ASSERT_GE(client, 0);
  ASSERT_EQ(sock_write(client, "secret", 6), 0);
  ASSERT_TRUE(run_until_closed(client));
  EXPECT_EQ(conns_[client].reason, SOCK_CLOSE_ERROR);
  EXPECT_EQ(conns_[client].tls_error.rfind("handshake failed", 0), 0u) << conns_[client].tls_error;
  EXPECT_EQ(moved(before, SOCK_TLS_FAIL_PROTOCOL), 1u);
}

}  // namespace
