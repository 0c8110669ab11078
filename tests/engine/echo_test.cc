// An echo server on one reactor: the data path end to end.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::run_until;

int g_listener = -1;
int g_closed = 0;

void echo_on_data(struct Reactor* r, int fd) {
  if (fd == g_listener) {
    while (sock_accept(r, fd) >= 0) {}
    return;
  }
  char buf[4096];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<size_t>(n));
}

void count_close(struct Reactor*, int) { ++g_closed; }

TEST(EchoTest, BytesComeBackInOrderAndCloseIsReportedOnce) {
  struct Reactor r = {};
  r.on_data = echo_on_data;
  r.on_close = count_close;
  auto l = testing_support::listen_loopback();
  g_listener = l.fd;
  g_closed = 0;
  ASSERT_EQ(reactor_add(&r, l.fd), 0);
  const int client = testing_support::connect_client(l.port);
  const std::string msg = testing_support::pattern(3 * 1024 * 1024, 7);
  std::string got;
  std::size_t sent = 0;
  ASSERT_TRUE(run_until(&r, [&] {
    if (sent < msg.size()) {
      const ssize_t n = send(client, msg.data() + sent, msg.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
    testing_support::drain(client, &got);
    return got.size() >= msg.size();
  }));
  EXPECT_TRUE(got == msg);
  close(client);
  ASSERT_TRUE(run_until(&r, [&] { return g_closed == 1; }));
  reactor_stop(&r);
  ASSERT_TRUE(run_until(&r, [&] { return r._impl == nullptr; }));
  EXPECT_EQ(g_closed, 2);  // the listener too
}

}  // namespace
