#include "tests/engine/tls/tls_fixture.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "tests/testing/run_until.h"

namespace testing_support {
namespace {

void collect_log(int fd, const char* reason, void* udata) {
  static_cast<std::vector<std::string>*>(udata)->push_back("fd " + std::to_string(fd) + ": " +
                                                           reason);
}

}  // namespace

void TlsFixture::SetUp() {
  ServerFixture::SetUp();
  open_at_setup_ = tls_stats().open;
  const TestPki& pki = test_pki();
  server_tls_ = sock_tls_server_new(pki.localhost.cert.c_str(), pki.localhost.key.c_str());
  ASSERT_NE(server_tls_, nullptr) << sock_tls_error();
  ASSERT_EQ(sock_tls_set_alpn(server_tls_, "http/1.1"), 0);
  client_tls_ = sock_tls_client_new(pki.ca.c_str());
  ASSERT_NE(client_tls_, nullptr) << sock_tls_error();
  ASSERT_EQ(sock_tls_set_log(server_tls_, collect_log, &log_), 0);
  ASSERT_EQ(sock_tls_set_log(client_tls_, collect_log, &log_), 0);
}

void TlsFixture::TearDown() {
  stop();
  sock_tls_free(server_tls_);
  sock_tls_free(client_tls_);
  EXPECT_EQ(tls_stats().open, open_at_setup_) << "connections kept their TLS layer";
  ServerFixture::TearDown();
}

void TlsFixture::on_accept(int fd) {
  conns_[fd] = TlsConn{};
  conns_[fd].server = true;
  EXPECT_EQ(sock_tls_accept(fd, server_tls_), 0) << std::strerror(errno);
}

void TlsFixture::on_connection_data(int fd) {
  TlsConn& c = conns_[fd];
  if (paused_.count(fd)) return;
  char buf[65536];
  for (;;) {
    const ssize_t n = sock_read(fd, buf, std::min(read_size_, sizeof buf));
    if (n > 0) {
      if (c.server && c.resumed == -2) {
        c.resumed = sock_tls_resumed(fd);
        const char* alpn = sock_tls_alpn(fd);
        c.alpn = alpn ? alpn : "";
      }
      c.got.append(buf, static_cast<std::size_t>(n));
      if (c.server) on_server_plaintext(fd, buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == 0) c.eof = true;
    return;
  }
}

void TlsFixture::on_server_plaintext(int fd, const char* data, std::size_t length) {
  if (echo_) {
    EXPECT_EQ(sock_write(fd, data, length), 0);
  }
}

void TlsFixture::on_close(struct Reactor* r, int fd) {
  ServerFixture::on_close(r, fd);
  TlsConn& c = conns_[fd];
  c.closed = true;
  c.reason = sock_close_reason();
  c.tls_error = sock_tls_error();
}

int TlsFixture::connect_tls(const char* server_name, SockTLS* config, int port) {
  const std::string service = std::to_string(port ? port : listener_.port);
  const int fd = sock_connect(&r_, "127.0.0.1", service.c_str());
  EXPECT_GE(fd, 0) << std::strerror(errno);
  if (fd < 0) return -1;
  conns_[fd] = TlsConn{};
  EXPECT_EQ(sock_tls_connect(fd, config ? config : client_tls_, server_name), 0)
      << std::strerror(errno);
  return fd;
}

int TlsFixture::connect_pair(int* server_fd, const char* server_name) {
  const std::size_t before = accepted_.size();
  const int fd = connect_tls(server_name);
  *server_fd = -1;
  EXPECT_TRUE(run_until(&r_, [&] { return accepted_.size() > before; }));
  if (accepted_.size() > before) *server_fd = accepted_.back();
  return fd;
}

bool TlsFixture::run_until_established(int client, int server) {
  return run_until(
      &r_, [&] { return sock_tls_established(client) == 1 && sock_tls_established(server) == 1; });
}

bool TlsFixture::run_until_received(int fd, std::size_t size) {
  return run_until(&r_, [&] { return conns_[fd].got.size() >= size || conns_[fd].closed; });
}

bool TlsFixture::run_until_closed(int fd) {
  return run_until(&r_, [&] { return conns_[fd].closed; });
}

bool TlsFixture::round_trip(TlsClient& peer, const std::string& data) {
  const std::string expected = peer.received() + data;
  peer.send(data);
  return run_until(&r_, [&] { return !peer.pump() || peer.received() == expected; });
}

SockTLSStats TlsFixture::tls_stats() {
  SockTLSStats s{};
  EXPECT_EQ(sock_tls_stats(&s), 0);
  return s;
}

}  // namespace testing_support
