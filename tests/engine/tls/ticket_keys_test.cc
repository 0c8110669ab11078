// engine/tls/ticket_keys.cc: session tickets are encrypted with keys the configuration holds,
// so a session made on one reactor (a shard) resumes on another that shares the
// configuration, and sock_tls_rotate_ticket_keys keeps the previous key only.
// Servers: reactors on threads of their own; the client: OpenSSL's, on the test thread.
#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "tests/testing/loopback.h"
#include "tests/testing/tls_certs.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::Session;
using testing_support::test_pki;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;

// A TLS server on a reactor driven by a thread of its own. Every read is answered with
// "resumed=R;" (sock_tls_resumed of that connection).
class ServerThread {
 public:
  explicit ServerThread(SockTLS* tls) : tls_(tls) {
    holder_.self = this;
    holder_.r.on_data = on_data;
    listener_ = testing_support::listen_loopback();
    EXPECT_EQ(reactor_add(&holder_.r, listener_.fd), 0);
    // The setup above is this thread's last call with the reactor: the new one owns it now.
    thread_ = std::thread([this] {
      while (reactor_review(&holder_.r) >= 0) {
      }
    });
  }
  ~ServerThread() {
    reactor_stop(&holder_.r);
    thread_.join();
  }
  int port() const { return listener_.port; }

 private:
  // r first: the callbacks get &holder_.r and find the object from it.
  struct Holder {
    struct Reactor r;
    ServerThread* self;
  };

  static void on_data(struct Reactor* r, int fd) {
    ServerThread* self = reinterpret_cast<Holder*>(r)->self;
    if (fd == self->listener_.fd) {
      int c;
      while ((c = sock_accept(r, fd)) >= 0) {
        if (sock_tls_accept(c, self->tls_) < 0) sock_force_close(r, c);
      }
      return;
    }
    char buf[4096];
    while (sock_read(fd, buf, sizeof buf) > 0) {
      char reply[32];
      const int n = std::snprintf(reply, sizeof reply, "resumed=%d;", sock_tls_resumed(fd));
      sock_write(fd, reply, static_cast<std::size_t>(n));
    }
  }

  SockTLS* tls_;
  Holder holder_ = {};
  testing_support::Listener listener_;
  std::thread thread_;
};

class TicketKeysTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    tls_ = sock_tls_server_new(test_pki().localhost.cert.c_str(), test_pki().localhost.key.c_str());
    ASSERT_NE(tls_, nullptr) << sock_tls_error();
    config_ = std::make_unique<TlsClientConfig>(test_pki().ca, "", GetParam());
  }
  void TearDown() override { sock_tls_free(tls_); }

  // One request on a new connection to `port`, resuming `session` if given. Returns the
  // server's answer ("resumed=R;") and sets *next to the session to resume later.
  std::string request(int port, SSL_SESSION* session, Session* next = nullptr) {
    TlsClient peer(*config_, port, "localhost", session);
    peer.send("?");
    const bool answered = peer.run([&] { return peer.received().find(';') != std::string::npos; });
    EXPECT_TRUE(answered) << peer.error();
    if (!answered) return "<" + peer.error() + ">";
    EXPECT_EQ(peer.version(), GetParam());
    EXPECT_EQ(peer.resumed(), peer.received() == "resumed=1;");
    if (next) {
      *next = peer.session();
      EXPECT_TRUE(*next && SSL_SESSION_is_resumable(next->get()));
    }
    return peer.received();
  }

  SockTLS* tls_ = nullptr;
  std::unique_ptr<TlsClientConfig> config_;
};

// A ticket from one reactor resumes on another sharing the configuration, both ways.
TEST_P(TicketKeysTest, SessionFromOneReactorResumesOnAnother) {
  ServerThread a(tls_), b(tls_);
  SockTLSStats before{};
  ASSERT_EQ(sock_tls_stats(&before), 0);
  Session from_a, from_b;
  EXPECT_EQ(request(a.port(), nullptr, &from_a), "resumed=0;");
  EXPECT_EQ(request(b.port(), from_a.get(), &from_b), "resumed=1;");
  EXPECT_EQ(request(a.port(), from_b.get()), "resumed=1;");
  SockTLSStats after{};
  ASSERT_EQ(sock_tls_stats(&after), 0);
  EXPECT_EQ(after.handshakes - before.handshakes, 3u);
  EXPECT_EQ(after.resumed - before.resumed, 2u);
}

// A chain of resumptions never falls back to a full handshake. (That a TLS 1.3 resumption
// also brings a fresh ticket, which clients that use a ticket once need, this client cannot
// tell: it resumes its old session again. `openssl s_client -sess_in/-sess_out` chains show it.)
TEST_P(TicketKeysTest, EveryResumptionBringsATicketForTheNext) {
  ServerThread server(tls_);
  Session session;
  EXPECT_EQ(request(server.port(), nullptr, &session), "resumed=0;");
  for (int i = 0; i < 3; ++i) {
    Session next;
    EXPECT_EQ(request(server.port(), session.get(), &next), "resumed=1;");
    session = std::move(next);
  }
}

// A ticket advertises the lifetime it is sure to be honoured for: one key period. A key
// encrypts tickets during its first period and decrypts them until two have passed since it
// began, so a ticket issued at the end of its key's first period has one period left. (Two
// were advertised: tickets from the second half of a key's period expired early. The window
// itself runs on CLOCK_MONOTONIC inside ticket_keys.cc and OpenSSL's time(), which no test
// can step.)
TEST_P(TicketKeysTest, TicketsAdvertiseTheLifetimeTheyAreSureToBeHonouredFor) {
  ServerThread server(tls_);
  Session session;
  EXPECT_EQ(request(server.port(), nullptr, &session), "resumed=0;");
  ASSERT_TRUE(session);
  EXPECT_EQ(SSL_SESSION_get_ticket_lifetime_hint(session.get()),
            static_cast<unsigned long>(SOCK_TLS_TICKET_KEY_S));
}

// Another configuration has keys of its own: its servers do not resume the first one's
// sessions.
TEST_P(TicketKeysTest, AnotherConfigurationDoesNotResume) {
  SockTLS* other =
      sock_tls_server_new(test_pki().localhost.cert.c_str(), test_pki().localhost.key.c_str());
  ASSERT_NE(other, nullptr);
  {
    ServerThread a(tls_), b(other);
    Session session;
    EXPECT_EQ(request(a.port(), nullptr, &session), "resumed=0;");
    EXPECT_EQ(request(b.port(), session.get()), "resumed=0;");
    EXPECT_EQ(request(a.port(), session.get()), "resumed=1;");
  }
  sock_tls_free(other);
}

// After one rotation a ticket of the key before still resumes (and the server renews it under
// the new key); after a second rotation that key is gone: a full handshake. The renewed
// ticket survives the second rotation.
TEST_P(TicketKeysTest, RotationKeepsThePreviousKeyOnly) {
  ServerThread server(tls_);
  Session first, renewed;
  EXPECT_EQ(request(server.port(), nullptr, &first), "resumed=0;");
  ASSERT_EQ(sock_tls_rotate_ticket_keys(tls_), 0);
  EXPECT_EQ(request(server.port(), first.get(), &renewed), "resumed=1;");
  ASSERT_EQ(sock_tls_rotate_ticket_keys(tls_), 0);
  EXPECT_EQ(request(server.port(), first.get()), "resumed=0;");
  EXPECT_EQ(request(server.port(), renewed.get()), "resumed=1;");
}

// Each reactor thread handshakes with its own copy of the keys; a rotation made on another
// thread (here the test's) reaches every copy by that thread's next handshake. After one
// rotation, a ticket that reactor a issues under the new key resumes on b, whose copy held
// only the keys before it; after a second, a's first ticket resumes on neither.
TEST_P(TicketKeysTest, RotationOnOneThreadReachesAnotherThreadsNextHandshake) {
  ServerThread a(tls_), b(tls_);
  Session first;
  EXPECT_EQ(request(a.port(), nullptr, &first), "resumed=0;");
  EXPECT_EQ(request(b.port(), first.get()), "resumed=1;");  // b has a copy of the same key
  ASSERT_EQ(sock_tls_rotate_ticket_keys(tls_), 0);
  Session fresh;
  EXPECT_EQ(request(a.port(), nullptr, &fresh), "resumed=0;");
  EXPECT_EQ(request(b.port(), fresh.get()), "resumed=1;");
  ASSERT_EQ(sock_tls_rotate_ticket_keys(tls_), 0);
  EXPECT_EQ(request(b.port(), first.get()), "resumed=0;");
  EXPECT_EQ(request(a.port(), first.get()), "resumed=0;");
  EXPECT_EQ(request(a.port(), fresh.get()), "resumed=1;");
}

// Rotations from another thread while two reactors issue and decrypt tickets: every
// connection is served, whether it resumed or not (the shared keys and each thread's copy of
// them; TSan checks it).
TEST_P(TicketKeysTest, RotationWhileHandshakingIsSafe) {
  ServerThread a(tls_), b(tls_);
  std::atomic<bool> done{false};
  // Bounded, so that it does not take a core from the servers for the whole test.
  std::thread rotator([&] {
    for (int i = 0; i < 1000 && !done.load(); ++i) EXPECT_EQ(sock_tls_rotate_ticket_keys(tls_), 0);
  });
  Session session;
  for (int i = 0; i < 20; ++i) {
    const std::string answer = request(i % 2 ? a.port() : b.port(), session.get(), &session);
    EXPECT_TRUE(answer == "resumed=0;" || answer == "resumed=1;") << answer;
  }
  done = true;
  rotator.join();
}

INSTANTIATE_TEST_SUITE_P(Versions, TicketKeysTest,
                         ::testing::Values(TLS1_2_VERSION, TLS1_3_VERSION), [](const auto& info) {
                           return info.param == TLS1_2_VERSION ? "Tls12" : "Tls13";
                         });

}  // namespace
