// sock_client: a small netcat / `openssl s_client` on libsock, and a user of the client side
// of the public API: one connection (sock_connect) on a reactor this program drives itself,
// with TLS (engine/tls/sock_tls.h) verifying the server when asked. It sends its input, then
// copies everything it receives to stdout until the connection ends.
//   sock_client --host H --port P [--tls [--ca-file PEM] [--server-name NAME] [--alpn LIST]]
//               [--send TEXT] [--expect-bytes N] [--timeout-ms MS] [--verbose]
// The input is --send, with the C escapes \r \n \t \0 \\ \xHH turned into their bytes, or else
// all of stdin, read to its end before connecting (a request, not an interactive session).
// --tls verifies the certificate against the system's trust store, or --ca-file's CAs, and the
// name --server-name (default --host; also the SNI name unless it is an IP address).
// --expect-bytes N closes the connection once N bytes came, for a server that keeps it open.
// Exit status: 0 when the connection ended cleanly (the peer closed, or N bytes came); 1 with
// "sock_client: REASON" on stderr when it did not (no connection, a TLS failure such as
// "TLS: handshake failed: certificate verify failed: certificate has expired", --timeout-ms
// passed, fewer than N bytes); 2 for a bad command line (the message and the usage on stderr).
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"

namespace {

// The whole program's state: one connection, on the main thread.
struct Client {
  std::string host, port;
  bool tls = false, verbose = false;
  std::uint64_t expect = 0;  // 0: until the peer closes
  unsigned timeout_ms = 10000;
  std::uint64_t received = 0;
  bool connected = false;    // on_ready ran
  bool established = false;  // the TLS handshake completed
  bool done = false;
  int status = 1;
  std::string failure;  // why, when status is 1
} g;

// --send's C escapes. Throws CLI::ValidationError for an unknown or cut escape.
std::string unescape(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out += text[i];
      continue;
    }
    const char c = ++i < text.size() ? text[i] : '?';
    static const std::string kFrom = "rnt0\\", kTo = std::string("\r\n\t\0\\", 5);
    if (const std::size_t k = kFrom.find(c); k != std::string::npos) {
      out += kTo[k];
    } else if (c == 'x' && i + 2 < text.size() &&
               std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      throw CLI::ValidationError("--send", "unknown escape at byte " + std::to_string(i - 1) +
                                               " (\\r \\n \\t \\0 \\\\ \\xHH)");
    }
  }
  return out;
}

void finish(int status, const std::string& failure = "") {
  g.done = true;
  g.status = status;
  g.failure = failure;
}

void on_ready(struct Reactor*, int) {
  if (g.connected) return;  // a drained queue after a pause: nothing to say
  g.connected = true;
  if (g.verbose) {
    std::fprintf(stderr, "sock_client: connected to %s:%s\n", g.host.c_str(), g.port.c_str());
  }
}

// Reads per on_data call. Reading until EAGAIN never ends against a peer that sends faster
// than stdout takes it, and the deadline is checked by the reactor loop, between callbacks;
// the engine calls on_data again when a callback read without reaching EAGAIN.
constexpr int kReadsPerCall = 16;

void on_data(struct Reactor* r, int fd) {
  char buf[16 * 1024];
  bool enough = false;  // --expect-bytes came: checked as bytes come, not once drained
  for (int reads = 0; reads < kReadsPerCall && !enough; ++reads) {
    const ssize_t n = sock_read(fd, buf, sizeof buf);
    if (n <= 0) break;
    std::fwrite(buf, 1, static_cast<std::size_t>(n), stdout);
    g.received += static_cast<std::uint64_t>(n);
    enough = g.expect && g.received >= g.expect;
  }
  if (g.tls && !g.established && sock_tls_established(fd) == 1) {
    g.established = true;
    const char* alpn = sock_tls_alpn(fd);
    if (g.verbose) {
      std::fprintf(stderr, "sock_client: TLS established, ALPN %s, %s\n", alpn ? alpn : "none",
                   sock_tls_resumed(fd) == 1 ? "resumed" : "not resumed");
    }
  }
  // EOF mid-handshake closes the connection even with our input held (the engine does it):
  // on_close reports it.
  // Abandoning a stream the peer may still be sending: a graceful close with its input unread
  // would linger, reading on for seconds; the reset is what stops the sender.
  if (enough) sock_force_close(r, fd);
}

void on_close(struct Reactor*, int) {
  std::fflush(stdout);
  if (g.done) return;  // a failure while setting up, reported already
  switch (sock_close_reason()) {
    case SOCK_CLOSE_TIMEOUT:
      return finish(1, "timed out after " + std::to_string(g.timeout_ms) + " ms");
    case SOCK_CLOSE_ERROR:
      if (g.tls && *sock_tls_error()) return finish(1, std::string("TLS: ") + sock_tls_error());
      // on_close is not told the errno (a refused connect, a reset).
      return finish(1, (g.connected ? "the connection to " : "cannot connect to ") + g.host + ":" +
                           g.port + (g.connected ? " failed" : ""));
    case SOCK_CLOSE_PEER:
    case SOCK_CLOSE_LOCAL:
      if (g.tls && !g.established) return finish(1, "TLS: the peer closed during the handshake");
      if (g.received < g.expect) {
        return finish(1, "the connection ended after " + std::to_string(g.received) + " of " +
                             std::to_string(g.expect) + " bytes");
      }
      return finish(0);
  }
}

// A bad command line: the reason, then the usage, on stderr.
int usage_error(const CLI::App& app, const std::string& reason) {
  std::fprintf(stderr, "sock_client: %s\n%s", reason.c_str(), app.help().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Connects, sends its input, prints what comes back until the peer closes.",
               "sock_client");
  std::string ca_file, server_name, alpn, send;
  app.add_option("--host", g.host, "the server's name or address")->type_name("H")->required();
  app.add_option("--port", g.port, "the server's TCP port")->type_name("P")->required();
  CLI::Option* tls = app.add_flag("--tls", g.tls, "speak TLS, verifying the server");
  app.add_option("--ca-file", ca_file, "trust these CAs (PEM) instead of the system's")
      ->type_name("PEM")
      ->needs(tls);
  app.add_option("--server-name", server_name,
                 "the name to verify and send as SNI (default --host)")
      ->type_name("NAME")
      ->needs(tls);
  app.add_option("--alpn", alpn, "protocols to offer, comma-separated: h2,http/1.1")
      ->type_name("LIST")
      ->needs(tls);
  CLI::Option* send_option =
      app.add_option("--send", send, "send this (C escapes) instead of stdin")->type_name("TEXT");
  app.add_option("--expect-bytes", g.expect, "close once N bytes came (0: wait for the peer)")
      ->type_name("N");
  app.add_option("--timeout-ms", g.timeout_ms, "give up after MS ms (default 10000; 0: never)")
      ->type_name("MS");
  app.add_flag("--verbose", g.verbose,
               "say on stderr when connected, and TLS's ALPN and resumption");
  try {
    app.parse(argc, argv);
    send = unescape(send);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    return usage_error(app, e.what());
  }
  if (!*send_option) send.assign(std::istreambuf_iterator<char>(std::cin), {});
  if (server_name.empty()) server_name = g.host;

  SockTLS* config = nullptr;
  if (g.tls) {
    config = sock_tls_client_new(ca_file.empty() ? nullptr : ca_file.c_str());
    if (!config) {
      std::fprintf(stderr, "sock_client: TLS: %s\n", sock_tls_error());
      return 1;
    }
    if (!alpn.empty() && sock_tls_set_alpn(config, alpn.c_str()) < 0) {
      sock_tls_free(config);
      return usage_error(app, "--alpn: names of 1 to 255 bytes, separated by commas");
    }
    // The deadline below covers the handshake; the layer's own would clear it when done.
    sock_tls_set_handshake_timeout(config, 0);
    sock_tls_set_log(config, nullptr, nullptr);  // on_close reports the reason
  }
  struct Reactor r = {.on_data = on_data, .on_ready = on_ready, .on_close = on_close};
  const int fd = sock_connect(&r, g.host.c_str(), g.port.c_str());
  if (fd < 0) {
    std::fprintf(stderr, "sock_client: cannot connect to %s:%s: %s\n", g.host.c_str(),
                 g.port.c_str(), std::strerror(errno));
    sock_tls_free(config);
    return 1;
  }
  if (g.tls && sock_tls_connect(fd, config, server_name.c_str()) < 0) {
    finish(1, std::string("TLS: ") + (*sock_tls_error() ? sock_tls_error() : std::strerror(errno)));
  } else if ((g.timeout_ms && sock_set_deadline(fd, g.timeout_ms) < 0) ||
             (!send.empty() && sock_write(fd, send.data(), send.size()) < 0)) {
    finish(1, std::strerror(errno));
  }
  if (g.done) sock_force_close(&r, fd);
  sock_tls_free(config);  // the connection keeps its reference
  while (!g.done && reactor_review(&r) >= 0) {}
  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  if (g.status) std::fprintf(stderr, "sock_client: %s\n", g.failure.c_str());
  return g.status;
}
