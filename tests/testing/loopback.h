// File: tests/testing/loopback.h
// Loopback sockets for tests: listeners on port 0, plain clients, byte sinks.
#ifndef TESTS_TESTING_LOOPBACK_H_
#define TESTS_TESTING_LOOPBACK_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace testing_support {

// A listening socket on 127.0.0.1 with a kernel-chosen port (sock_listen with "0").
struct Listener {
  int fd = -1;
  int port = 0;
};
Listener listen_loopback();

// A plain, already connected, non-blocking TCP client to 127.0.0.1:port (connect completes
// at once on loopback for a listening port). rcvbuf > 0 shrinks SO_RCVBUF first.
int connect_client(int port, int rcvbuf = 0);

// The local or the peer's port of an IPv4 TCP socket (a connection is known by its ports on
// both ends: the client's local port is the server side's peer port), or -1.
int local_port(int fd);
int peer_port(int fd);

// The fd of this process that listens on 127.0.0.1:port (a server's listener), or -1. Makes
// no fd, so it works while the process is out of them. Looks at fds below 4096.
int listening_fd(int port);

// Reads what is available without blocking and appends it to *sink. Returns false once the
// peer closed (EOF or reset), true otherwise.
bool drain(int fd, std::string* sink);

// Clears O_NONBLOCK on fd, as another holder of its open file (a dup, another process) may
// after sock_open set it. Returns fcntl's result.
int set_blocking(int fd);

// Shrinks fd's kernel send buffer (SO_SNDBUF), so that a write queue fills it quickly.
void set_sndbuf(int fd, int bytes);

// Makes close(fd) send a RST instead of a FIN (SO_LINGER {on, 0}). Returns setsockopt's result.
int reset_on_close(int fd);

// Writes all of data, retrying on EAGAIN (the other side must be reading meanwhile: use only
// for data that fits in socket buffers).
void write_all(int fd, const std::string& data);

// A deterministic byte pattern: byte i of stream `seed`.
char pattern_byte(std::size_t i, unsigned seed);
std::string pattern(std::size_t length, unsigned seed);

// The first offset where a and b differ (their common length if one is a prefix of the other).
std::size_t first_difference(std::string_view a, std::string_view b);

}  // namespace testing_support

#endif  // TESTS_TESTING_LOOPBACK_H_
