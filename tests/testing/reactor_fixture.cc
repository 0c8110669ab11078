#include "tests/testing/reactor_fixture.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "engine/reactor.h"
#include "tests/testing/run_until.h"

namespace testing_support {

void assert_sigpipe_default() {
  struct sigaction sa;
  ASSERT_EQ(sigaction(SIGPIPE, nullptr, &sa), 0);
  ASSERT_EQ(sa.sa_handler, SIG_DFL) << "SIGPIPE must keep its default action";
  sigset_t blocked;
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, nullptr, &blocked), 0);
  ASSERT_FALSE(sigismember(&blocked, SIGPIPE));
}

// --- ReactorFixture ----------------------------------------------------------------------------

void ReactorFixture::SetUp() {
  current_ = this;
  r_.on_data = data_cb;
  r_.on_ready = ready_cb;
  r_.on_shutdown = shutdown_cb;
  r_.on_close = close_cb;
}

void ReactorFixture::TearDown() {
  stop();
  current_ = nullptr;
}

void ReactorFixture::stop() {
  if (!r_._impl) return;
  reactor_stop(&r_);
  ASSERT_TRUE(run_until(&r_, [&] { return r_._impl == nullptr; }));
}

void ReactorFixture::run_iterations(int n) {
  int i = 0;
  run_until(&r_, [&] { return i++ >= n; });
}

SockPoolStats ReactorFixture::pool_stats() {
  SockPoolStats s{};
  EXPECT_EQ(sock_pool_stats(&r_, &s), 0);
  return s;
}

bool ReactorFixture::read_at_least(int fd, std::string* got, std::size_t size) {
  return run_until(&r_, [&] {
    drain(fd, got);
    return got->size() >= size;
  });
}

bool ReactorFixture::read_until_closed(int fd, std::string* got, std::size_t size) {
  return run_until(&r_, [&] { return !drain(fd, got) || got->size() >= size; });
}

std::string ReactorFixture::read_to_eof(int fd, std::size_t size) {
  std::string got;
  EXPECT_TRUE(read_until_closed(fd, &got, size));
  return got;
}

// --- ServerFixture -----------------------------------------------------------------------------

void ServerFixture::SetUp() {
  ReactorFixture::SetUp();
  listener_ = listen_loopback();
  ASSERT_EQ(reactor_add(&r_, listener_.fd), 0);
}

void ServerFixture::on_data(struct Reactor* r, int fd) {
  if (fd == listener_.fd) {
    int c;
    while ((c = sock_accept(r, fd)) >= 0) {
      accepted_.push_back(c);
      on_accept(c);
    }
    return;
  }
  on_connection_data(fd);
}

void ServerFixture::on_connection_data(int fd) {
  char buf[4096];
  while (sock_read(fd, buf, sizeof buf) > 0) {}
}

int ServerFixture::connect_and_accept(int* server_fd, int rcvbuf) {
  const int client = connect_client(listener_.port, rcvbuf);
  const std::size_t before = accepted_.size();
  *server_fd = -1;
  // A lambda, because ASSERT_* returns from a void function only.
  [&] { ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() > before; })); }();
  if (accepted_.size() > before) *server_fd = accepted_.back();
  return client;
}

void ServerFixture::settle() {
  for (int i = 0; i < 5; ++i) engine::Reactor::of(&r_, true)->run_once(1);
}

// --- OneClientFixture --------------------------------------------------------------------------

void OneClientFixture::TearDown() {
  if (client_ >= 0) close(client_);
  ServerFixture::TearDown();
}

void OneClientFixture::connect_client(int buffer) {
  client_ = connect_and_accept(&server_, buffer);
  if (buffer > 0 && server_ >= 0) set_sndbuf(server_, buffer);
}

void OneClientFixture::reset_client() {
  reset_on_close(client_);
  close(client_);
  client_ = -1;
}

void OneClientFixture::on_close(struct Reactor* r, int fd) {
  ServerFixture::on_close(r, fd);
  if (fd == server_) ++server_closes_;
}

}  // namespace testing_support
