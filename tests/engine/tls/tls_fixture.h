// File: tests/engine/tls/tls_fixture.h
// A reactor fixture with TLS on both ends, all on the test thread: the loopback listener's
// connections start the server side (sock_tls_accept), and engine clients (sock_connect +
// sock_tls_connect) run on the same reactor, so run_until() drives both without threads.
// Certificates come from tests/testing/tls_certs.h.
// Threads: the test thread only (it owns the reactor). Ownership: the fixture owns both
// configurations (a test may replace server_tls_, freeing the old one).
#ifndef TESTS_ENGINE_TLS_TLS_FIXTURE_H_
#define TESTS_ENGINE_TLS_TLS_FIXTURE_H_

#include <gtest/gtest.h>

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/tls_certs.h"
#include "tests/testing/tls_client.h"

namespace testing_support {

// What the fixture saw of one connection (either end), keyed by fd until a new connection
// takes the number.
struct TlsConn {
  bool server = false;
  std::string got;      // plaintext read
  bool eof = false;     // sock_read returned -1 with errno 0
  bool closed = false;  // on_close ran
  SockCloseReason reason = SOCK_CLOSE_LOCAL;
  std::string tls_error;  // sock_tls_error() in on_close
  // Server side, when its first plaintext arrived: sock_tls_resumed() and sock_tls_alpn().
  int resumed = -2;
  std::string alpn;
};

class TlsFixture : public ServerFixture {
 protected:
  // server_tls_: the localhost certificate, ALPN "http/1.1"; client_tls_: trusts the test CA.
  // Both log failures into log_ ("fd N: reason").
  void SetUp() override;
  // Stops the reactor, frees both configurations, and checks that no connection kept its
  // layer (sock_tls_stats().open back to where SetUp found it).
  void TearDown() override;

  void on_accept(int fd) override;
  void on_connection_data(int fd) override;
  void on_close(struct Reactor* r, int fd) override;

  // The server side's reaction to plaintext: by default it echoes every byte.
  virtual void on_server_plaintext(int fd, const char* data, std::size_t length);

  // An engine TLS client to 127.0.0.1:port (0: the listener) with `config` (client_tls_ if
  // nullptr), verifying server_name (nullptr: no name). Returns its fd, or -1 with a test
  // failure.
  int connect_tls(const char* server_name = "localhost", SockTLS* config = nullptr, int port = 0);
  // connect_tls(), then runs until the server side is accepted (*server_fd).
  int connect_pair(int* server_fd, const char* server_name = "localhost");
  // Runs the reactor until the connection on fd is established on both ends.
  bool run_until_established(int client, int server);
  // Runs until conns_[fd] holds at least `size` bytes (or closed).
  bool run_until_received(int fd, std::size_t size);
  bool run_until_closed(int fd);
  // `peer` (OpenSSL's client, on this thread) sends `data`, and the reactor runs, pumping the
  // peer, until the server side's echo of it came back (peer.received() grew by `data`) or the
  // peer can do nothing more (failed or ended: true too, the test's checks say which). False
  // if the deadline passed first.
  bool round_trip(TlsClient& peer, const std::string& data);

  static SockTLSStats tls_stats();

  SockTLS* server_tls_ = nullptr;
  SockTLS* client_tls_ = nullptr;
  std::map<int, TlsConn> conns_;
  std::vector<std::string> log_;
  // Bytes each sock_read asks for (at most 64 KiB).
  std::size_t read_size_ = 65536;
  // Connections whose input is left unread (in the kernel) until resume_reading().
  std::set<int> paused_;
  void resume_reading(int fd) {
    paused_.erase(fd);
    on_connection_data(fd);
  }
  // Tests that must not echo set it to false: the server side then only records.
  bool echo_ = true;

 private:
  uint64_t open_at_setup_ = 0;
};

}  // namespace testing_support

#endif  // TESTS_ENGINE_TLS_TLS_FIXTURE_H_
