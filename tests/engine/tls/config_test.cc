// engine/tls/config.cc: configurations (files, trust, ALPN, SNI certificates, reference
// counts) and the argument checks of the calls that take them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "tests/engine/tls/tls_fixture.h"
#include "tests/testing/run_until.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::run_until;
using testing_support::test_pki;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;
using testing_support::TlsFixture;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(ConfigTest, ServerConfigurationRefusesMissingAndMismatchedFiles) {
  const auto& pki = test_pki();
  errno = 0;
  EXPECT_EQ(sock_tls_server_new(nullptr, pki.localhost.key.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_server_new(pki.localhost.cert.c_str(), nullptr), nullptr);
  EXPECT_EQ(errno, EINVAL);

  const std::string missing = pki.dir + "/missing.crt";
  errno = 0;
  EXPECT_EQ(sock_tls_server_new(missing.c_str(), pki.localhost.key.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), "cannot use certificate " + missing)) << sock_tls_error();

  errno = 0;
  EXPECT_EQ(sock_tls_server_new(pki.localhost.cert.c_str(), missing.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), "cannot use private key " + missing)) << sock_tls_error();

  // A PEM file that is not a certificate.
  errno = 0;
  EXPECT_EQ(sock_tls_server_new(pki.localhost.key.c_str(), pki.localhost.key.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);

  errno = 0;
  EXPECT_EQ(sock_tls_server_new(pki.localhost.cert.c_str(), pki.other.key.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  // OpenSSL checks the key against the certificate as it loads it.
  EXPECT_TRUE(contains(sock_tls_error(),
                       "cannot use private key " + pki.other.key + ": key values mismatch"))
      << sock_tls_error();

  SockTLS* ok = sock_tls_server_new(pki.localhost.cert.c_str(), pki.localhost.key.c_str());
  EXPECT_NE(ok, nullptr) << sock_tls_error();
  sock_tls_free(ok);
  sock_tls_free(nullptr);  // a no-op
}

TEST(ConfigTest, ClientConfigurationRefusesAMissingCaFile) {
  const std::string missing = test_pki().dir + "/missing-ca.crt";
  errno = 0;
  EXPECT_EQ(sock_tls_client_new(missing.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), "cannot load CA certificates from " + missing))
      << sock_tls_error();
}

TEST(ConfigTest, AddCertificateNeedsAServerConfigurationAndGoodFiles) {
  const auto& pki = test_pki();
  SockTLS* server = sock_tls_server_new(pki.localhost.cert.c_str(), pki.localhost.key.c_str());
  SockTLS* client = sock_tls_client_new(pki.ca.c_str());
  ASSERT_TRUE(server && client);
  errno = 0;
  EXPECT_EQ(sock_tls_add_certificate(client, pki.other.cert.c_str(), pki.other.key.c_str()), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_add_certificate(nullptr, pki.other.cert.c_str(), pki.other.key.c_str()), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_add_certificate(server, pki.other.cert.c_str(), pki.localhost.key.c_str()),
            -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), "key values mismatch")) << sock_tls_error();
  EXPECT_EQ(sock_tls_add_certificate(server, pki.other.cert.c_str(), pki.other.key.c_str()), 0);
  sock_tls_free(server);
  sock_tls_free(client);
}

// Runs load() on a thread of its own, and if it has not returned after a deadline opens the
// FIFO at `fifo` for writing and closes it again, which ends a blocked open or read of it (a
// reader then sees EOF). Returns whether load() returned on its own.
template <typename Load>
bool returns_without_a_writer(const std::string& fifo, Load load) {
  std::atomic<bool> done{false};
  std::thread loader([&] {
    load();
    done = true;
  });
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  const bool returned = done;
  while (!done) {
    const int w = open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (w >= 0) close(w);
    std::this_thread::yield();
  }
  loader.join();
  return returned;
}

// Files are read whole, without blocking and without asking for a passphrase: a FIFO named as
// a certificate, key or CA file held the calling thread in fopen() until something wrote to
// it, a directory read as "no start line", and an encrypted key had OpenSSL prompt on the
// terminal. Each is now refused with EINVAL and a reason naming the file.
TEST(ConfigTest, FilesThatAreNotRegularOrAreEncryptedAreRefusedWithoutBlockingOrPrompting) {
  const auto& pki = test_pki();
  const std::string fifo = pki.dir + "/config_test.fifo";
  unlink(fifo.c_str());
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const char* const cert = pki.localhost.cert.c_str();
  const char* const key = pki.localhost.key.c_str();

  struct Case {
    const char* what;
    std::function<bool()> fails;  // with EINVAL
  };
  const Case fifo_cases[] = {
      {"a FIFO as the certificate",
       [&] { return !sock_tls_server_new(fifo.c_str(), key) && errno == EINVAL; }},
      {"a FIFO as the key",
       [&] { return !sock_tls_server_new(cert, fifo.c_str()) && errno == EINVAL; }},
      {"a FIFO as the CA file",
       [&] { return !sock_tls_client_new(fifo.c_str()) && errno == EINVAL; }},
  };
  for (const Case& c : fifo_cases) {
    SCOPED_TRACE(c.what);
    bool failed = false;
    std::string error;  // sock_tls_error() is the loading thread's
    EXPECT_TRUE(returns_without_a_writer(fifo, [&] {
      failed = c.fails();
      error = sock_tls_error();
    })) << "blocked until something wrote to the FIFO";
    EXPECT_TRUE(failed);
    EXPECT_TRUE(contains(error, fifo + ": not a regular file")) << error;
  }
  unlink(fifo.c_str());

  errno = 0;
  EXPECT_EQ(sock_tls_server_new(pki.dir.c_str(), key), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), pki.dir + ": not a regular file")) << sock_tls_error();

  // The localhost key, encrypted with a passphrase.
  const std::string encrypted = pki.dir + "/config_test-encrypted.key";
  {
    FILE* in = std::fopen(key, "r");
    ASSERT_NE(in, nullptr);
    EVP_PKEY* pkey = PEM_read_PrivateKey(in, nullptr, nullptr, nullptr);
    std::fclose(in);
    ASSERT_NE(pkey, nullptr);
    FILE* out = std::fopen(encrypted.c_str(), "w");
    ASSERT_NE(out, nullptr);
    static const char kPass[] = "secret";
    EXPECT_EQ(PEM_write_PrivateKey(out, pkey, EVP_aes_128_cbc(),
                                   reinterpret_cast<const unsigned char*>(kPass), 6, nullptr,
                                   nullptr),
              1);
    std::fclose(out);
    EVP_PKEY_free(pkey);
  }
  errno = 0;
  EXPECT_EQ(sock_tls_server_new(cert, encrypted.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), "private key " + encrypted + ": encrypted"))
      << sock_tls_error();
  unlink(encrypted.c_str());

  // Larger than any certificate file (a sparse file: it takes no disk).
  const std::string huge = pki.dir + "/config_test-huge.crt";
  const int fd = open(huge.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, off_t{64} << 20), 0);
  close(fd);
  errno = 0;
  EXPECT_EQ(sock_tls_client_new(huge.c_str()), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_TRUE(contains(sock_tls_error(), huge + ": larger than")) << sock_tls_error();
  unlink(huge.c_str());
}

TEST(ConfigTest, SetAlpnRefusesMalformedLists) {
  SockTLS* server =
      sock_tls_server_new(test_pki().localhost.cert.c_str(), test_pki().localhost.key.c_str());
  ASSERT_NE(server, nullptr);
  const std::string too_long(256, 'a');
  for (const char* bad : {"", ",", "h2,", ",h2", "h2,,http/1.1", too_long.c_str()}) {
    errno = 0;
    EXPECT_EQ(sock_tls_set_alpn(server, bad), -1) << '"' << bad << '"';
    EXPECT_EQ(errno, EINVAL) << '"' << bad << '"';
  }
  errno = 0;
  EXPECT_EQ(sock_tls_set_alpn(server, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_set_alpn(nullptr, "h2"), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_tls_set_alpn(server, std::string(255, 'a').c_str()), 0);
  EXPECT_EQ(sock_tls_set_alpn(server, "h2,http/1.1"), 0);
  sock_tls_free(server);
}

TEST(ConfigTest, SettersAndRotationRefuseWhatTheyCannotApplyTo) {
  SockTLS* client = sock_tls_client_new(test_pki().ca.c_str());
  ASSERT_NE(client, nullptr);
  errno = 0;
  EXPECT_EQ(sock_tls_rotate_ticket_keys(client), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_rotate_ticket_keys(nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_set_handshake_timeout(nullptr, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_set_log(nullptr, nullptr, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_tls_set_log(client, nullptr, nullptr), 0);  // silent
  sock_tls_free(client);
}

class ConfigFixture : public TlsFixture {
 protected:
  // Replaces the server configuration (the localhost certificate) with one choosing among
  // `alpn`, with other.example's certificate added when `sni`.
  void reconfigure(const char* alpn, bool sni) {
    sock_tls_free(server_tls_);
    const auto& pki = test_pki();
    server_tls_ = sock_tls_server_new(pki.localhost.cert.c_str(), pki.localhost.key.c_str());
    ASSERT_NE(server_tls_, nullptr);
    if (alpn) {
      ASSERT_EQ(sock_tls_set_alpn(server_tls_, alpn), 0);
    }
    if (sni) {
      ASSERT_EQ(
          sock_tls_add_certificate(server_tls_, pki.other.cert.c_str(), pki.other.key.c_str()), 0);
    }
  }

  // A handshake from OpenSSL's client offering `alpn`; returns what the client saw chosen and
  // what the server saw (its first plaintext's sock_tls_alpn).
  std::string client_and_server_alpn(const std::string& alpn) {
    TlsClientConfig config(test_pki().ca, alpn);
    TlsClient peer(config, listener_.port, "localhost");
    EXPECT_TRUE(round_trip(peer, "x")) << peer.error();
    return peer.alpn() + "|" + conns_[accepted_.back()].alpn;
  }
};

TEST_F(ConfigFixture, ServerChoosesItsFirstProtocolThatTheClientOffers) {
  ASSERT_NO_FATAL_FAILURE(reconfigure("h2,http/1.1", false));
  EXPECT_EQ(client_and_server_alpn("http/1.1,h2"), "h2|h2");
  EXPECT_EQ(client_and_server_alpn("http/1.1"), "http/1.1|http/1.1");
  // Nothing in common, or nothing offered: the handshake goes on without ALPN.
  EXPECT_EQ(client_and_server_alpn("spdy/3"), "|");
  EXPECT_EQ(client_and_server_alpn(""), "|");
}

TEST_F(ConfigFixture, ServerWithoutAlpnIgnoresTheClientsOffer) {
  ASSERT_NO_FATAL_FAILURE(reconfigure(nullptr, false));
  EXPECT_EQ(client_and_server_alpn("http/1.1"), "|");
}

// SNI picks an added certificate by its names; an unknown name gets the first certificate,
// which a client verifying that name refuses with a reason that says so.
TEST_F(ConfigFixture, SniSelectsTheCertificateAndUnknownNamesGetTheDefault) {
  ASSERT_NO_FATAL_FAILURE(reconfigure("http/1.1", true));
  int server = -1;
  const int other = connect_pair(&server, "other.example");
  ASSERT_EQ(sock_write(other, "hi", 2), 0);
  ASSERT_TRUE(run_until_received(other, 2));
  EXPECT_EQ(conns_[other].got, "hi");
  EXPECT_STREQ(sock_tls_alpn(other), nullptr);  // client_tls_ offers none

  const int local = connect_pair(&server, "localhost");
  ASSERT_EQ(sock_write(local, "hi", 2), 0);
  ASSERT_TRUE(run_until_received(local, 2));
  EXPECT_EQ(conns_[local].got, "hi");

  const SockTLSStats before = tls_stats();
  const int unknown = connect_pair(&server, "unknown.example");
  ASSERT_EQ(sock_write(unknown, "hi", 2), 0);
  ASSERT_TRUE(run_until_closed(unknown));
  EXPECT_EQ(conns_[unknown].reason, SOCK_CLOSE_ERROR);
  EXPECT_TRUE(contains(conns_[unknown].tls_error, "hostname mismatch"))
      << conns_[unknown].tls_error;
  EXPECT_EQ(
      tls_stats().failures[SOCK_TLS_FAIL_CERTIFICATE] - before.failures[SOCK_TLS_FAIL_CERTIFICATE],
      1u);
  EXPECT_EQ(conns_[server].got, "");
}

// Which certificate came, seen by OpenSSL's client without verification.
TEST_F(ConfigFixture, UnknownSniIsServedTheFirstCertificate) {
  ASSERT_NO_FATAL_FAILURE(reconfigure(nullptr, true));
  for (const auto& [sni, cn] :
       {std::pair<std::string, std::string>{"other.example", "other.example"},
        {"unknown.example", "localhost"},
        {"", "localhost"}}) {
    TlsClientConfig config;
    TlsClient peer(config, listener_.port, sni);
    ASSERT_TRUE(run_until(&r_, [&] { return !peer.pump() || peer.established(); })) << peer.error();
    EXPECT_EQ(peer.peer_common_name(), cn) << "SNI " << sni;
  }
}

// A session made with an added certificate (SNI) resumes like one of the first certificate:
// every context of the configuration has the same ticket keys.
TEST_F(ConfigFixture, SniSessionsResume) {
  ASSERT_NO_FATAL_FAILURE(reconfigure(nullptr, true));
  TlsClientConfig config(test_pki().ca);
  testing_support::Session session;
  for (int i = 0; i < 2; ++i) {
    TlsClient peer(config, listener_.port, "other.example", session.get());
    ASSERT_TRUE(round_trip(peer, "x")) << peer.error();
    EXPECT_EQ(peer.peer_common_name(), "other.example");
    EXPECT_EQ(peer.resumed(), i == 1);
    EXPECT_EQ(conns_[accepted_.back()].resumed, i);
    session = peer.session();
  }
}

// The configuration is reference-counted: freed by its creator while a connection uses it,
// it lives on until that connection closes.
TEST_F(ConfigFixture, FreeingTheConfigurationKeepsOpenConnectionsWorking) {
  int server = -1;
  const int client = connect_pair(&server);
  sock_tls_free(server_tls_);
  sock_tls_free(client_tls_);
  server_tls_ = client_tls_ = nullptr;
  const std::string data(100000, 'z');
  ASSERT_EQ(sock_write(client, data.data(), data.size()), 0);
  ASSERT_TRUE(run_until_received(client, data.size()));
  EXPECT_EQ(conns_[client].got, data);
  sock_close(&r_, client);
  ASSERT_TRUE(run_until(&r_, [&] { return conns_[client].closed && conns_[server].closed; }));
}

TEST_F(ConfigFixture, AcceptAndConnectCheckTheirArguments) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(&r_, pair[0]), 0);
  const int fd = pair[0];
  errno = 0;
  EXPECT_EQ(sock_tls_accept(fd, client_tls_), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_connect(fd, server_tls_, "localhost"), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_accept(fd, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_tls_accept(pair[1], server_tls_), -1);  // never opened with the sock_ API
  EXPECT_EQ(errno, EBADF);

  int from_other_thread = 0, other_errno = 0;
  std::thread([&] {
    from_other_thread = sock_tls_accept(fd, server_tls_);
    other_errno = errno;
  }).join();
  EXPECT_EQ(from_other_thread, -1);
  EXPECT_EQ(other_errno, EPERM);

  const SockTLSStats before = tls_stats();
  ASSERT_EQ(sock_tls_accept(fd, server_tls_), 0);
  EXPECT_EQ(tls_stats().open, before.open + 1);
  errno = 0;
  EXPECT_EQ(sock_tls_accept(fd, server_tls_), -1);  // TLS must be the lowest layer
  EXPECT_EQ(errno, EINVAL);
  sock_force_close(&r_, fd);
  close(pair[1]);
  EXPECT_EQ(tls_stats().open, before.open);
  // A connection closed before any handshake byte counts as closed mid-handshake.
  EXPECT_EQ(tls_stats().failures[SOCK_TLS_FAIL_CLOSED], before.failures[SOCK_TLS_FAIL_CLOSED] + 1);
}

// A server name SNI cannot carry (empty, or over 255 bytes) is refused with EINVAL, the fd
// left as it was, and sock_tls_error() says why (not an older failure's reason). OpenSSL's
// own error goes with it: a later, unrelated failure on the thread does not carry it.
TEST_F(ConfigFixture, AServerNameSniCannotCarryIsRefusedWithItsReason) {
  const std::string missing = test_pki().dir + "/missing.pem";
  for (const std::string& name : {std::string(256, 'a'), std::string()}) {
    SCOPED_TRACE(name.size());
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
    ASSERT_EQ(sock_open(&r_, pair[0]), 0);
    EXPECT_EQ(sock_tls_client_new(missing.c_str()), nullptr);  // an older reason
    errno = 0;
    EXPECT_EQ(sock_tls_connect(pair[0], client_tls_, name.c_str()), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(sock_tlc_get(pair[0]), nullptr);
    EXPECT_EQ(sock_pending(pair[0]), 0) << "a ClientHello was queued";
    EXPECT_TRUE(contains(sock_tls_error(), "server name")) << sock_tls_error();
    EXPECT_FALSE(contains(sock_tls_error(), missing)) << sock_tls_error();
    EXPECT_EQ(sock_tls_client_new(missing.c_str()), nullptr);
    EXPECT_TRUE(contains(sock_tls_error(), "cannot load CA certificates from " + missing))
        << sock_tls_error();
    EXPECT_FALSE(contains(sock_tls_error(), "servername")) << sock_tls_error();
    sock_force_close(&r_, pair[0]);
    close(pair[1]);
  }
}

// An fd without a reactor is refused (EINVAL) and left as it was: nothing would send the
// records the layer queues from inside sock_read (the last handshake flight, the writes held
// through it) until the application called sock_flush, and no deadline could bound the
// handshake. With the deadline switched off too. Once attached, the same fd is accepted.
TEST_F(ConfigFixture, AnFdWithoutAReactorIsRefused) {
  const SockTLSStats before = tls_stats();
  for (const unsigned handshake_ms : {1000u, 0u}) {
    ASSERT_EQ(sock_tls_set_handshake_timeout(server_tls_, handshake_ms), 0);
    ASSERT_EQ(sock_tls_set_handshake_timeout(client_tls_, handshake_ms), 0);
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
    ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
    errno = 0;
    EXPECT_EQ(sock_tls_accept(pair[0], server_tls_), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(sock_tlc_get(pair[0]), nullptr);
    const std::string port = std::to_string(listener_.port);
    const int client = sock_connect(nullptr, "127.0.0.1", port.c_str());
    ASSERT_GE(client, 0) << std::strerror(errno);
    errno = 0;
    EXPECT_EQ(sock_tls_connect(client, client_tls_, "localhost"), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(sock_tlc_get(client), nullptr);
    EXPECT_EQ(sock_pending(client), 0) << "a ClientHello was queued";
    EXPECT_EQ(tls_stats().open, before.open);

    ASSERT_EQ(sock_attach(&r_, pair[0]), 0);
    EXPECT_EQ(sock_tls_accept(pair[0], server_tls_), 0) << std::strerror(errno);
    sock_force_close(&r_, pair[0]);
    sock_force_close(&r_, client);
    close(pair[1]);
  }
  EXPECT_EQ(tls_stats().open, before.open);
}

}  // namespace
