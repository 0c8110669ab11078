// The socket helpers of libsock.h: sock_listen, sock_max_capacity, sock_set_non_block,
// sock_accept and sock_connect, as seen through the API (errno values, socket options).
// libsock.h comes first, so it must compile with nothing before it in C++.
#include "engine/libsock.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "tests/testing/loopback.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::run_until;

bool ipv6_available() {
  const int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

// The bound address of fd.
sockaddr_storage local_address(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  return addr;
}

int port_of(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
}

// A blocking connect to loopback (127.0.0.1 or ::1) on port; the fd, or -1.
int connect_blocking(int family, int port) {
  const int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage addr{};
  socklen_t len;
  if (family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(port));
    in6->sin6_addr = in6addr_loopback;
    len = sizeof *in6;
  } else {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    in->sin_family = AF_INET;
    in->sin_port = htons(static_cast<uint16_t>(port));
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *in;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int int_option(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof value;
  EXPECT_EQ(getsockopt(fd, level, name, &value, &len), 0);
  return value;
}

// An fd number that is certainly not open: a descriptor we just closed (single-threaded).
int closed_fd() {
  const int fd = dup(STDERR_FILENO);
  close(fd);
  return fd;
}

// sock_accept once the listener has a connection queued (its connect() has returned).
int accept_pending(int listener) {
  pollfd p{listener, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 10000), 1) << "no connection queued";
  const int fd = sock_accept(nullptr, listener);
  EXPECT_GE(fd, 0) << std::strerror(errno);
  return fd;
}

// Connects to listener's port over `family` and accepts the connection with sock_accept, then
// closes both ends.
void expect_accepts_over(int family, int listener, int port) {
  const int client = connect_blocking(family, port);
  ASSERT_GE(client, 0);
  const int server = accept_pending(listener);
  sock_force_close(nullptr, server);
  close(client);
}

TEST(SocketOpsTest, ListenOnIpv4LoopbackPicksAFreePortAndAcceptsThere) {
  const int listener = sock_listen("127.0.0.1", "0");
  ASSERT_GE(listener, 0) << std::strerror(errno);
  const sockaddr_storage addr = local_address(listener);
  ASSERT_EQ(addr.ss_family, AF_INET);
  EXPECT_EQ(reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  const int port = port_of(addr);
  ASSERT_GT(port, 0);
  ASSERT_NO_FATAL_FAILURE(expect_accepts_over(AF_INET, listener, port));
  close(listener);
}

TEST(SocketOpsTest, ListenOnIpv6LoopbackAcceptsOverIpv6) {
  if (!ipv6_available()) GTEST_SKIP() << "no IPv6 loopback on this host";
  const int listener = sock_listen("::1", "0");
  ASSERT_GE(listener, 0) << std::strerror(errno);
  const sockaddr_storage addr = local_address(listener);
  ASSERT_EQ(addr.ss_family, AF_INET6);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr));
  const int port = port_of(addr);
  ASSERT_GT(port, 0);
  ASSERT_NO_FATAL_FAILURE(expect_accepts_over(AF_INET6, listener, port));
  close(listener);
}

TEST(SocketOpsTest, ListenOnNullAddressIsReachableOverIpv4AndIpv6) {
  const int listener = sock_listen(nullptr, "0");
  ASSERT_GE(listener, 0) << std::strerror(errno);
  const sockaddr_storage addr = local_address(listener);
  const int port = port_of(addr);
  ASSERT_GT(port, 0);
  const int v4 = connect_blocking(AF_INET, port);
  ASSERT_GE(v4, 0) << "the wildcard listener must take IPv4";
  const int first = accept_pending(listener);
  if (ipv6_available()) {
    // One dual-stack IPv6 socket serves both families.
    ASSERT_EQ(addr.ss_family, AF_INET6);
    EXPECT_TRUE(IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr));
    EXPECT_EQ(int_option(listener, IPPROTO_IPV6, IPV6_V6ONLY), 0);
    const int v6 = connect_blocking(AF_INET6, port);
    ASSERT_GE(v6, 0) << "the wildcard listener must take IPv6";
    const int second = accept_pending(listener);
    sock_force_close(nullptr, second);
    close(v6);
  }
  sock_force_close(nullptr, first);
  close(v4);
  close(listener);
}

TEST(SocketOpsTest, ListeningSocketIsNonBlockingCloseOnExecAndReusesAddresses) {
  const int listener = sock_listen("127.0.0.1", "0");
  ASSERT_GE(listener, 0);
  EXPECT_TRUE(fcntl(listener, F_GETFL) & O_NONBLOCK);
  EXPECT_TRUE(fcntl(listener, F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(int_option(listener, SOL_SOCKET, SO_REUSEADDR), 1);
  EXPECT_EQ(int_option(listener, SOL_SOCKET, SO_ACCEPTCONN), 1);
  EXPECT_EQ(int_option(listener, SOL_SOCKET, SO_TYPE), SOCK_STREAM);
  close(listener);
}

TEST(SocketOpsTest, ListenOnAPortInUseFailsWithEaddrinuse) {
  const int first = sock_listen("127.0.0.1", "0");
  ASSERT_GE(first, 0);
  const std::string port = std::to_string(port_of(local_address(first)));
  // SO_REUSEADDR does not share a port with a listening socket (only SO_REUSEPORT would).
  errno = 0;
  EXPECT_EQ(sock_listen("127.0.0.1", port.c_str()), -1);
  EXPECT_EQ(errno, EADDRINUSE);
  close(first);
}

TEST(SocketOpsTest, ListenOnANonLocalAddressFailsWithEaddrnotavail) {
  // 192.0.2.1 (TEST-NET-1) is numeric, so nothing is looked up, and never local.
  errno = 0;
  EXPECT_EQ(sock_listen("192.0.2.1", "0"), -1);
  EXPECT_EQ(errno, EADDRNOTAVAIL);
}

TEST(SocketOpsTest, ListenOnANameThatDoesNotResolveFailsWithEaddrnotavail) {
  // Not a valid host name: the resolver rejects it without asking DNS.
  errno = 0;
  EXPECT_EQ(sock_listen("bad!name", "0"), -1);
  EXPECT_EQ(errno, EADDRNOTAVAIL);
}

TEST(SocketOpsTest, ListenOnAnUnknownServiceFailsWithErrno) {
  errno = 0;
  EXPECT_EQ(sock_listen("127.0.0.1", "no-such-service"), -1);
  EXPECT_NE(errno, 0);
}

TEST(SocketOpsTest, ListenWithNullPortFailsWithEinval) {
  errno = 0;
  EXPECT_EQ(sock_listen("127.0.0.1", nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_listen(nullptr, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST(SocketOpsTest, MaxCapacityRaisesTheSoftFdLimitToTheHardLimit) {
  rlimit original;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &original), 0);
  ASSERT_GT(original.rlim_max, 64u);
  rlimit lowered = original;
  lowered.rlim_cur = original.rlim_max - 1;  // below the hard limit, above the fds in use
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);

  const ssize_t capacity = sock_max_capacity();

  rlimit now;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &now), 0);
  EXPECT_EQ(now.rlim_cur, original.rlim_max);
  EXPECT_EQ(now.rlim_max, original.rlim_max);
  // The limit, capped by what the fd table can index.
  EXPECT_EQ(capacity, static_cast<ssize_t>(std::min<rlim_t>(original.rlim_max, engine::kMaxFds)));
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &original), 0);
}

TEST(SocketOpsTest, SetNonBlockAddsONonblockAndKeepsOtherFlags) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_EQ(fcntl(sv[0], F_SETFL, O_APPEND), 0);
  ASSERT_FALSE(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
  EXPECT_EQ(sock_set_non_block(sv[0]), 0);
  EXPECT_TRUE(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
  EXPECT_TRUE(fcntl(sv[0], F_GETFL) & O_APPEND);
  EXPECT_EQ(sock_set_non_block(sv[0]), 0);  // idempotent
  EXPECT_TRUE(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
  close(sv[0]);
  close(sv[1]);
}

TEST(SocketOpsTest, SetNonBlockOnABadFdFailsWithEbadf) {
  errno = 0;
  EXPECT_EQ(sock_set_non_block(closed_fd()), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(sock_set_non_block(-1), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(SocketOpsTest, AcceptWithNothingPendingFailsWithEagain) {
  const auto listener = testing_support::listen_loopback();
  errno = 0;
  EXPECT_EQ(sock_accept(nullptr, listener.fd), -1);
  EXPECT_EQ(errno, EAGAIN);
  close(listener.fd);
}

TEST(SocketOpsTest, AcceptedSocketIsNonBlockingCloseOnExecNoDelayAndOpen) {
  const auto listener = testing_support::listen_loopback();
  const int client = connect_blocking(AF_INET, listener.port);
  ASSERT_GE(client, 0);
  const int server = accept_pending(listener.fd);
  ASSERT_GE(server, 0);
  EXPECT_TRUE(fcntl(server, F_GETFL) & O_NONBLOCK);
  EXPECT_TRUE(fcntl(server, F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(int_option(server, IPPROTO_TCP, TCP_NODELAY), 1);
  // Opened for the sock_ API: it reads and writes with no further call.
  EXPECT_FALSE(sock_is_closed(server));
  ASSERT_EQ(sock_write(server, "ping", 4), 0);
  char buf[4];
  ASSERT_EQ(recv(client, buf, sizeof buf, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  // Nothing else is pending now.
  errno = 0;
  EXPECT_EQ(sock_accept(nullptr, listener.fd), -1);
  EXPECT_EQ(errno, EAGAIN);
  sock_force_close(nullptr, server);
  close(client);
  close(listener.fd);
}

TEST(SocketOpsTest, AcceptOnABadFdFailsWithEbadf) {
  errno = 0;
  EXPECT_EQ(sock_accept(nullptr, closed_fd()), -1);
  EXPECT_EQ(errno, EBADF);
}

// Callback counters of the connect tests.
struct Counts {
  int ready = 0;
  int closed = 0;
  int last_ready_fd = -1;
  int last_closed_fd = -1;
};
Counts g_counts;

void count_ready(struct Reactor*, int fd) {
  ++g_counts.ready;
  g_counts.last_ready_fd = fd;
}
void count_close(struct Reactor*, int fd) {
  ++g_counts.closed;
  g_counts.last_closed_fd = fd;
}

// A reactor whose on_ready and on_close are counted in g_counts (reset here). Copied before
// its first use, which is when the engine state is created.
struct Reactor counting_reactor() {
  g_counts = {};
  struct Reactor r = {};
  r.on_ready = count_ready;
  r.on_close = count_close;
  return r;
}

// Stops r and runs it until its engine state is gone.
void stop(struct Reactor* r) {
  reactor_stop(r);
  ASSERT_TRUE(run_until(r, [&] { return r->_impl == nullptr; }));
}

TEST(SocketOpsTest, ConnectReportsOnReadyOnceAndSendsWritesQueuedBeforeIt) {
  struct Reactor r = counting_reactor();
  const auto listener = testing_support::listen_loopback();
  const std::string port = std::to_string(listener.port);
  const int fd = sock_connect(&r, "127.0.0.1", port.c_str());
  ASSERT_GE(fd, 0) << std::strerror(errno);
  // Queued before the connection completes; sent once it does.
  ASSERT_EQ(sock_write(fd, "early", 5), 0);
  EXPECT_EQ(g_counts.ready, 0);  // reported from the reactor, never from inside connect
  int server = -1;
  std::string got;
  ASSERT_TRUE(run_until(&r, [&] {
    if (server < 0) server = sock_accept(nullptr, listener.fd);
    if (server >= 0) {
      char buf[16];
      const ssize_t n = sock_read(server, buf, sizeof buf);
      if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    }
    return got.size() >= 5 && g_counts.ready > 0;
  }));
  EXPECT_EQ(got, "early");
  EXPECT_EQ(g_counts.ready, 1);
  EXPECT_EQ(g_counts.last_ready_fd, fd);
  EXPECT_EQ(g_counts.closed, 0);
  // Writes after on_ready flow as well, and on_ready is not repeated.
  ASSERT_EQ(sock_write(fd, "late", 4), 0);
  got.clear();
  ASSERT_TRUE(run_until(&r, [&] {
    char buf[16];
    const ssize_t n = sock_read(server, buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    return got.size() >= 4;
  }));
  EXPECT_EQ(got, "late");
  EXPECT_EQ(g_counts.ready, 1);
  sock_force_close(nullptr, server);
  close(listener.fd);
  stop(&r);
  EXPECT_EQ(g_counts.closed, 1);  // the connection, closed by the stop (or by the peer)
  EXPECT_EQ(g_counts.last_closed_fd, fd);
}

TEST(SocketOpsTest, ConnectToAClosedPortReportsOnCloseAndNeverOnReady) {
  struct Reactor r = counting_reactor();
  // A port that was free a moment ago: nothing listens there.
  const auto listener = testing_support::listen_loopback();
  close(listener.fd);
  const std::string port = std::to_string(listener.port);
  errno = 0;
  const int fd = sock_connect(&r, "127.0.0.1", port.c_str());
  if (fd < 0) {  // refused at once: reported by the call itself
    EXPECT_EQ(errno, ECONNREFUSED);
  } else {
    ASSERT_TRUE(run_until(&r, [&] { return g_counts.closed > 0; }));
    EXPECT_EQ(g_counts.closed, 1);
    EXPECT_EQ(g_counts.last_closed_fd, fd);
    EXPECT_TRUE(sock_is_closed(fd));
    errno = 0;
    EXPECT_EQ(sock_write(fd, "x", 1), -1);
    EXPECT_EQ(errno, EBADF);
  }
  EXPECT_EQ(g_counts.ready, 0);
  stop(&r);
  EXPECT_EQ(g_counts.ready, 0);
}

TEST(SocketOpsTest, ConnectToABadAddressFailsAtOnce) {
  struct Reactor r = {};
  // TCP to a multicast address is refused by the kernel inside connect(2).
  errno = 0;
  EXPECT_EQ(sock_connect(&r, "224.0.0.1", "80"), -1);
  EXPECT_EQ(errno, ENETUNREACH);
  errno = 0;
  EXPECT_EQ(sock_connect(&r, "bad!name", "80"), -1);
  EXPECT_EQ(errno, EADDRNOTAVAIL);
  errno = 0;
  EXPECT_EQ(sock_connect(&r, "127.0.0.1", nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_connect(&r, "127.0.0.1", "no-such-service"), -1);
  EXPECT_NE(errno, 0);
  if (r._impl) stop(&r);
}

}  // namespace
