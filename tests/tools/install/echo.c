/* A seed-era C program, built outside Bazel against the installed library (install_test.sh):
 * one reactor echoes a message through a loopback connection to itself, and the program exits
 * 0 once the client has it back byte for byte (1: a call failed, 2: no echo within 10 s).
 * It includes the headers as the seed did and builds with `pkg-config --cflags --libs libsock`. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "libreact.h"
#include "libsock.h"

#define MESSAGE_BYTES (3 * BUFFER_PACKET_SIZE + 5) /* several packets, one partly filled */

static int listener = -1, client = -1;
static char sent[MESSAGE_BYTES], received[MESSAGE_BYTES];
static size_t received_bytes;

static void on_data(struct Reactor* reactor, int fd) {
  char buf[4096];
  ssize_t n;
  if (fd == listener) {
    while (sock_accept(reactor, listener) >= 0) {
    }
    return;
  }
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (fd != client) {
      sock_write(fd, buf, (size_t)n); /* the server's side echoes */
    } else if (received_bytes + (size_t)n <= sizeof received) {
      memcpy(received + received_bytes, buf, (size_t)n);
      received_bytes += (size_t)n;
    }
  }
}

static int fail(const char* what) {
  perror(what);
  return 1;
}

int main(void) {
  struct Reactor reactor = {.on_data = on_data};
  struct sockaddr_in address;
  socklen_t length = sizeof address;
  char port[16];
  time_t deadline = time(NULL) + 10;
  size_t i;

  for (i = 0; i < sizeof sent; ++i) sent[i] = (char)('a' + i % 26);
  if ((listener = sock_listen("127.0.0.1", "0")) < 0) return fail("sock_listen");
  if (reactor_add(&reactor, listener) < 0) return fail("reactor_add");
  if (getsockname(listener, (struct sockaddr*)&address, &length) < 0) return fail("getsockname");
  snprintf(port, sizeof port, "%u", (unsigned)ntohs(address.sin_port));
  if ((client = sock_connect(&reactor, "127.0.0.1", port)) < 0) return fail("sock_connect");
  if (sock_write(client, sent, sizeof sent) < 0) return fail("sock_write");

  while (received_bytes < sizeof sent && time(NULL) < deadline) {
    if (reactor_review(&reactor) < 0) return fail("reactor_review");
  }
  reactor_stop(&reactor);
  if (received_bytes != sizeof sent || memcmp(sent, received, sizeof sent) != 0) {
    fprintf(stderr, "echo: %zu of %zu bytes came back intact\n", received_bytes, sizeof sent);
    return 2;
  }
  printf("echo: %zu bytes back through libsock %s\n", received_bytes, LIBSOCK_VERSION);
  return 0;
}
