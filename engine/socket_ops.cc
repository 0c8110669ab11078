#include "engine/socket_ops.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>

#include "engine/libsock.h"

namespace engine {
namespace {

int errno_of_gai(int gai) {
  switch (gai) {
    case EAI_SYSTEM:
      return errno;
    case EAI_MEMORY:
      return ENOMEM;
    case EAI_NONAME:
    case EAI_NODATA:
    case EAI_ADDRFAMILY:
      return EADDRNOTAVAIL;
    case EAI_AGAIN:
      return EAGAIN;
    default:
      return EINVAL;
  }
}

}  // namespace

addrinfo* resolve(const char* address, const char* port, bool passive) {
  if (!port) {
    errno = EINVAL;
    return nullptr;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* list = nullptr;
  const int gai = getaddrinfo(address, port, &hints, &list);
  if (gai != 0) {
    errno = errno_of_gai(gai);
    return nullptr;
  }
  return list;
}

int open_stream_socket(int family) {
  return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

int set_non_blocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return -1;
  return (flags & O_NONBLOCK) || fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 ? 0 : -1;
}

int set_no_delay(int fd) {
  // Writes are already coalesced per callback batch; Nagle would only add latency. Fails
  // harmlessly on non-TCP sockets.
  const int one = 1;
  return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int unacknowledged_bytes(int fd) {
  int unacknowledged = 0;
  return ioctl(fd, SIOCOUTQ, &unacknowledged) == 0 ? unacknowledged : 0;
}

int peer_progress_age_ms(int fd, bool queued) {
  if (!queued && unacknowledged_bytes(fd) <= 0) return -1;
  tcp_info info{};
  socklen_t length = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) < 0 ||
      length < offsetof(tcp_info, tcpi_last_ack_recv) + sizeof info.tcpi_last_ack_recv) {
    return -1;
  }
  const uint32_t age = std::max(info.tcpi_last_data_sent, info.tcpi_last_ack_recv);
  return static_cast<int>(std::min<uint32_t>(age, INT_MAX));
}

bool input_waits_unread(int fd) {
  int unread = 0;
  return ioctl(fd, SIOCINQ, &unread) == 0 && unread > 0;
}

void reset_on_close_if_owed(int fd, bool queued) {
  if (!queued && unacknowledged_bytes(fd) <= 0) return;
  const linger abort{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
}

int listen_socket(const char* address, const char* port, bool reuse_port,
                  unsigned defer_accept_s) {
  // The kernel turns the seconds into SYN-ACK retransmissions; an int holds any useful wait.
  const int defer = static_cast<int>(std::min<unsigned>(defer_accept_s, INT_MAX));
  addrinfo* list = resolve(address, port, true);
  if (!list) return -1;
  // "Any address" resolves to 0.0.0.0 and ::. A dual-stack IPv6 socket serves both, so it
  // goes first; the IPv4 wildcard is the fallback on hosts without IPv6.
  int fd = -1;
  int err = EADDRNOTAVAIL;
  for (int pass = 0; pass < 2 && fd < 0; ++pass) {
    for (addrinfo* ai = list; ai && fd < 0; ai = ai->ai_next) {
      if (!address && (pass == 0) != (ai->ai_family == AF_INET6)) continue;
      if (address && pass == 1) break;
      fd = open_stream_socket(ai->ai_family);
      if (fd < 0) {
        err = errno;
        continue;
      }
      const int one = 1, zero = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (reuse_port) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
      if (ai->ai_family == AF_INET6 && !address) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
      }
      set_no_delay(fd);
      if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
          (defer && setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer) < 0) ||
          listen(fd, SOMAXCONN) < 0) {
        err = errno;
        close(fd);
        fd = -1;
      }
    }
  }
  freeaddrinfo(list);
  if (fd < 0) errno = err;
  return fd;
}

}  // namespace engine
