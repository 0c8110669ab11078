// File: engine/socket_ops.h
// Socket setup shared by the libsock calls: name resolution and socket options. No fd state.
// Threads: any. Errors: nullptr / -1 with errno.
#ifndef ENGINE_SOCKET_OPS_H_
#define ENGINE_SOCKET_OPS_H_

#include <netdb.h>

namespace engine {

// getaddrinfo for TCP; errno is mapped from EAI_* (EINVAL for a NULL port). Free the list
// with freeaddrinfo.
addrinfo* resolve(const char* address, const char* port, bool passive);
// sock_listen(), with SO_REUSEPORT too when `reuse_port` (one listener per shard on one port),
// and TCP_DEFER_ACCEPT when `defer_accept_s` is not 0. Both, and TCP_NODELAY (which accepted
// sockets inherit: accept.h), are set before listen(), so no connection queues without them.
int listen_socket(const char* address, const char* port, bool reuse_port,
                  unsigned defer_accept_s = 0);
// A non-blocking, close-on-exec TCP socket.
int open_stream_socket(int family);
// O_NONBLOCK on fd, set only if it is missing (one fcntl to look, a second to set): 0, or -1
// with errno (EBADF: fd is not open). A reactor's thread must never block, and accept4 and
// sendfile, unlike recv and send, take no per-call MSG_DONTWAIT.
int set_non_blocking(int fd);
// TCP_NODELAY on fd: 0, or -1 with errno (ENOTSUP, EOPNOTSUPP: not a TCP socket).
int set_no_delay(int fd);
// For the idle timer of a connection with bytes its peer has not taken: how long ago, in the
// kernel's milliseconds (CLOCK_MONOTONIC's pace), the peer last took some. That is the older of
// the kernel's last data segment sent on fd (new data goes out only when the peer's receive
// window opens, i.e. when the peer's application reads; retransmissions count too) and the
// peer's last ACK (a peer that vanished acknowledges nothing, though the kernel retransmits
// to it; zero-window probes, which a non-reading peer does acknowledge, carry no data). -1 if nothing waits for
// the peer (`queued` false: nothing in user space, and the kernel's send queue is empty) or fd
// is not TCP. One ioctl and one getsockopt; meant for the rare timer that ran out.
int peer_progress_age_ms(int fd, bool queued);
// Whether input waits unread in fd's socket (SIOCINQ), so that close(2) now would send a
// reset: the case a lingering close avoids. One ioctl; false when it fails (not a socket).
bool input_waits_unread(int fd);
// What fd's kernel send queue holds that the peer has not acknowledged, sent or not
// (SIOCOUTQ; the FIN of a shut write side counts one). One ioctl; 0 when it fails.
int unacknowledged_bytes(int fd);
// For a connection that timed out: when bytes are still owed to its peer (`queued` in user
// space, or unacknowledged in the kernel's send queue), makes the close(2) that follows send a
// reset (SO_LINGER 0). With a FIN the orphaned socket would keep its send buffer and probe a
// reader that stopped for minutes, and a response cut short could pass for a whole one.
// Best effort: a failure leaves the ordinary close.
void reset_on_close_if_owed(int fd, bool queued);

}  // namespace engine

#endif  // ENGINE_SOCKET_OPS_H_
