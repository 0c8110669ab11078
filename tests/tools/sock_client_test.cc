// tools/sock_client as a process: the engine's TLS client (engine/tls, sock_tls_connect) against
// nginx with TLS on loopback, and against tools/echo_server --tls-cert. Certificates are made
// for the run (tls_certs.h, ECDSA P-256): a CA, a server certificate it signed for localhost and
// 127.0.0.1, an expired one, and a second CA that signed nothing here.
// nginx serves three ports: TLS 1.3 only, TLS 1.2 only (both with the good certificate) and
// the expired certificate. Its ports cannot be 0: each is picked by the kernel for a socket
// of the test that holds it until nginx listens there (HeldPort). Without nginx those tests
// skip themselves.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/testing/loopback.h"
#include "tests/testing/server_process.h"
#include "tests/testing/tls_certs.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::ChildStderr;
using testing_support::ServerProcess;
using testing_support::test_pki;

// Runfiles paths, relative to the test's working directory.
constexpr char kClient[] = "tools/sock_client";
constexpr char kEchoServer[] = "tools/echo_server";
// Bounds each wait on a child (sanitizer builds on a busy 2-core machine are slow).
constexpr auto kDeadline = std::chrono::seconds(60);
// nginx's index.html: several TLS records, and bytes of every value.
constexpr std::size_t kPageBytes = 70000;
constexpr std::size_t kEchoBytes = 100 * 1024;

std::string tmp_path(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

bool write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  return static_cast<bool>(out.flush());
}

// One run of sock_client: its exit status, stdout and stderr lines.
struct ClientRun {
  int status = -1;
  std::string out;
  std::vector<std::string> err;
  std::string all_err() const {
    std::string text;
    for (const std::string& line : err) text += line + "\n";
    return text;
  }
};

// Runs sock_client with `args` until it exits; stdin_path: its stdin (else the test's).
ClientRun run_client(const std::vector<std::string>& args, const std::string& stdin_path = "") {
  std::vector<std::string> argv = {kClient};
  argv.insert(argv.end(), args.begin(), args.end());
  ServerProcess client(argv, kDeadline,
                       {.stderr_to = ChildStderr::kOwnPipe, .stdin_path = stdin_path});
  ClientRun run;
  if (!client.started()) {
    run.err.push_back("spawn failed: errno " + std::to_string(client.spawn_error()));
    return run;
  }
  run.status = client.wait_exit(&run.out);
  run.err = client.stderr_lines();
  return run;
}

bool exited_with(const ClientRun& run, int code) {
  return testing_support::exited_with(run.status, code);
}

// One HTTP/1.1 response off the front of *stream: its head and body (by Content-Length).
// False, leaving *stream alone, for anything else.
bool take_response(std::string* stream, std::string* head, std::string* body) {
  const std::size_t end = stream->find("\r\n\r\n");
  const std::size_t length_at = stream->find("\r\nContent-Length: ");
  if (end == std::string::npos || length_at == std::string::npos || length_at > end) return false;
  const std::size_t length = std::stoul(stream->substr(length_at + 18));
  if (stream->size() < end + 4 + length) return false;
  *head = stream->substr(0, end + 4);
  *body = stream->substr(end + 4, length);
  stream->erase(0, end + 4 + length);
  return true;
}

// A free TCP port on 127.0.0.1, held for a server that binds it with SO_REUSEADDR (nginx
// does): this socket has SO_REUSEADDR too and never listens, which lets such a server bind and
// listen there while any other program is refused the port. Connections to it are refused
// until the server listens.
class HeldPort {
 public:
  HeldPort() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~HeldPort() {
    if (fd_ >= 0) close(fd_);
  }
  HeldPort(const HeldPort&) = delete;
  HeldPort& operator=(const HeldPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

bool accepts_connections(int port) {
  const int fd = testing_support::connect_loopback(port);
  if (fd < 0) return false;
  close(fd);
  return true;
}

// nginx's path, or "" if it is not installed (Bazel's test PATH may leave out /usr/sbin).
std::string find_nginx() {
  std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
  std::istringstream list(dirs + ":/usr/sbin:/usr/local/sbin");
  for (std::string dir; std::getline(list, dir, ':');) {
    const std::string path = dir + "/nginx";
    if (!dir.empty() && access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

class SockClientNginxTest : public ::testing::Test {
 protected:
  enum Port { kTls13, kTls12, kExpired, kPorts };

  // One nginx for the suite, or a reason in error_ why there is none.
  static void SetUpTestSuite() {
    const std::string nginx = find_nginx();
    if (nginx.empty()) {
      skip_ = "nginx is not installed (tools/deps installs nginx-light)";
      return;
    }
    const testing_support::TestPki* pki = nullptr;
    try {
      pki = &test_pki();
    } catch (const std::exception& e) {
      error_ = std::string("the certificates could not be made: ") + e.what();
      return;
    }
    std::array<HeldPort, kPorts> held;
    for (int i = 0; i < kPorts; ++i) ports_[i] = held[i].port();
    const std::string dir = tmp_path("nginx");
    const std::string page = testing_support::pattern(kPageBytes, 13);
    std::ostringstream conf;
    conf << "daemon off; master_process off; worker_processes 1;\n"
         << "pid " << dir << "/nginx.pid; error_log " << dir << "/error.log info;\n"
         << "events { worker_connections 64; }\n"
         << "http { access_log off; root " << dir << "/www;\n"
         << "  client_body_temp_path " << dir << "/tmp; proxy_temp_path " << dir << "/tmp;\n"
         << "  fastcgi_temp_path " << dir << "/tmp; uwsgi_temp_path " << dir << "/tmp;\n"
         << "  scgi_temp_path " << dir << "/tmp;\n"
         << "  ssl_certificate " << pki->localhost.cert << "; ssl_certificate_key "
         << pki->localhost.key << ";\n";
    for (const auto& [port, version] : {std::pair{kTls13, "TLSv1.3"}, {kTls12, "TLSv1.2"}}) {
      conf << "  server { listen 127.0.0.1:" << ports_[port] << " ssl; ssl_protocols " << version
           << ";\n"
           << "    location = /protocol { return 200 \"$ssl_protocol\"; } }\n";
    }
    conf << "  server { listen 127.0.0.1:" << ports_[kExpired] << " ssl;\n"
         << "    ssl_certificate " << pki->expired.cert << "; ssl_certificate_key "
         << pki->expired.key << "; } }\n";
    std::error_code made;
    std::filesystem::create_directories(dir + "/www", made);
    std::filesystem::create_directories(dir + "/tmp", made);
    if (made || !write_file(dir + "/nginx.conf", conf.str()) ||
        !write_file(dir + "/www/index.html", page)) {
      error_ = "cannot write nginx's files in " + dir;
      return;
    }
    page_ = new std::string(page);
    nginx_ = new ServerProcess(
        {nginx, "-p", dir, "-c", dir + "/nginx.conf", "-e", dir + "/error.log"}, kDeadline);
    const auto listening = [] {
      for (const int port : ports_) {
        if (!accepts_connections(port)) return false;
      }
      return true;
    };
    // An nginx that exits (a bad configuration) ends the wait at once.
    if (!nginx_->started() ||
        !testing_support::wait_for([&] { return !nginx_->running() || listening(); }, kDeadline) ||
        !nginx_->running()) {
      std::ifstream log(dir + "/error.log");
      error_ = "nginx did not listen on its ports; its error.log:\n" +
               std::string(std::istreambuf_iterator<char>(log), {});
    }
  }

  static void TearDownTestSuite() {
    if (nginx_) nginx_->stop();
    delete nginx_;  // SIGKILLs it if stop() did not end it
    nginx_ = nullptr;
    delete page_;
    page_ = nullptr;
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_TRUE(error_.empty()) << error_;
  }

  // sock_client over TLS to nginx's `port`, trusting `ca`, with `extra` flags; two pipelined
  // requests: GET / and GET /protocol (nginx's $ssl_protocol), the last closing.
  static ClientRun get(Port port, const std::string& ca, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {
        "--host", "127.0.0.1", "--port", std::to_string(ports_[port]), "--tls", "--ca-file", ca,
        "--send",
        "GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n"
        "GET /protocol HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_client(args);
  }

  // A get() whose handshake failed the certificate check for `reason`: exit 1, nothing on
  // stdout, and that one line on stderr.
  static void expect_verify_failure(const ClientRun& run, const std::string& reason) {
    EXPECT_TRUE(exited_with(run, 1)) << testing_support::describe(run.status);
    EXPECT_EQ(run.out, "");
    EXPECT_EQ(run.all_err(),
              "sock_client: TLS: handshake failed: certificate verify failed: " + reason + "\n");
  }

  // Both responses of get(): the page, then the protocol line.
  static void expect_page_and_protocol(ClientRun run, const std::string& protocol) {
    ASSERT_TRUE(exited_with(run, 0)) << testing_support::describe(run.status) << run.all_err();
    std::string head, body;
    ASSERT_TRUE(take_response(&run.out, &head, &body)) << run.out.substr(0, 300);
    EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
    EXPECT_EQ(body.size(), page_->size());
    EXPECT_TRUE(body == *page_) << "first difference at "
                                << testing_support::first_difference(body, *page_);
    ASSERT_TRUE(take_response(&run.out, &head, &body)) << run.out.substr(0, 300);
    EXPECT_EQ(body, protocol);
    EXPECT_EQ(run.out, "") << "bytes after the second response";
  }

  static inline std::string skip_;
  static inline std::string error_;
  static inline std::array<int, kPorts> ports_{};
  static inline ServerProcess* nginx_ = nullptr;
  static inline std::string* page_ = nullptr;
};

TEST_F(SockClientNginxTest, Tls13GetReturnsThePageByteForByteWithHttp11Negotiated) {
  const ClientRun run = get(kTls13, test_pki().ca,
                            {"--server-name", "localhost", "--alpn", "h2,http/1.1", "--verbose"});
  expect_page_and_protocol(run, "TLSv1.3");
  EXPECT_NE(run.all_err().find("sock_client: TLS established, ALPN http/1.1, not resumed\n"),
            std::string::npos)
      << run.all_err();
}

// No --server-name: the certificate is checked against --host, an IP address (no SNI).
TEST_F(SockClientNginxTest, Tls12GetReturnsThePageByteForByteCheckingTheIpAddress) {
  const ClientRun run = get(kTls12, test_pki().ca, {"--alpn", "http/1.1", "--verbose"});
  expect_page_and_protocol(run, "TLSv1.2");
  EXPECT_NE(run.all_err().find("ALPN http/1.1"), std::string::npos) << run.all_err();
}

TEST_F(SockClientNginxTest, WrongServerNameFailsWithHostnameMismatch) {
  expect_verify_failure(get(kTls13, test_pki().ca, {"--server-name", "wrong.example"}),
                        "hostname mismatch");
}

TEST_F(SockClientNginxTest, CertificateOfAnUntrustedCaFailsVerification) {
  expect_verify_failure(get(kTls13, test_pki().other_ca, {"--server-name", "localhost"}),
                        "unable to get local issuer certificate");
}

TEST_F(SockClientNginxTest, ExpiredCertificateFailsAsExpired) {
  expect_verify_failure(get(kExpired, test_pki().ca, {"--server-name", "localhost"}),
                        "certificate has expired");
}

// tools/echo_server, plain or with --tls-cert: it never closes, so --expect-bytes ends the run.
class SockClientEchoTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    std::vector<std::string> args = {kEchoServer, "--port", "0", "--threads", "1"};
    if (GetParam()) {
      const auto& files = test_pki().localhost;
      args.insert(args.end(), {"--tls-cert", files.cert, "--tls-key", files.key});
    }
    server_ = std::make_unique<ServerProcess>(args, kDeadline);
    ASSERT_TRUE(server_->started());
    const std::string line = server_->first_line();
    ASSERT_EQ(std::sscanf(line.c_str(), "echo_server listening on port %d", &port_), 1) << line;
  }

  void TearDown() override {
    if (!server_) return;
    const int status = server_->stop();
    EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
  }

  std::vector<std::string> connect_args() const {
    std::vector<std::string> args = {"--host", "127.0.0.1", "--port", std::to_string(port_)};
    if (GetParam()) args.insert(args.end(), {"--tls", "--ca-file", test_pki().ca});
    return args;
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
};

TEST_P(SockClientEchoTest, StdinOf100KBComesBackByteForByte) {
  const std::string payload = testing_support::pattern(kEchoBytes, GetParam() ? 5 : 6);
  const std::string input = tmp_path(GetParam() ? "echo_tls.in" : "echo_plain.in");
  ASSERT_TRUE(write_file(input, payload));
  std::vector<std::string> args = connect_args();
  args.insert(args.end(), {"--expect-bytes", std::to_string(kEchoBytes)});
  const ClientRun run = run_client(args, input);
  EXPECT_TRUE(exited_with(run, 0)) << testing_support::describe(run.status) << run.all_err();
  EXPECT_EQ(run.out.size(), payload.size());
  EXPECT_TRUE(run.out == payload) << "first difference at "
                                  << testing_support::first_difference(run.out, payload);
}

TEST_P(SockClientEchoTest, SendInterpretsCEscapes) {
  std::vector<std::string> args = connect_args();
  args.insert(args.end(), {"--send", "a\\r\\n\\t\\0\\\\\\x7f\\xFFz", "--expect-bytes", "9"});
  const ClientRun run = run_client(args);
  EXPECT_TRUE(exited_with(run, 0)) << testing_support::describe(run.status) << run.all_err();
  EXPECT_EQ(run.out, std::string("a\r\n\t\0\\\x7f\xffz", 9));
}

TEST_P(SockClientEchoTest, PeerThatNeverClosesEndsInATimeout) {
  std::vector<std::string> args = connect_args();
  args.insert(args.end(), {"--send", "ping", "--timeout-ms", "200"});
  const ClientRun run = run_client(args);
  EXPECT_TRUE(exited_with(run, 1)) << testing_support::describe(run.status);
  EXPECT_EQ(run.out, "ping");
  EXPECT_EQ(run.all_err(), "sock_client: timed out after 200 ms\n");
}

INSTANTIATE_TEST_SUITE_P(PlainAndTls, SockClientEchoTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tls" : "Plain"; });

TEST(SockClientTest, RefusedConnectionFailsWithExit1) {
  const HeldPort nobody_listens;
  ASSERT_GT(nobody_listens.port(), 0);
  const ClientRun run = run_client(
      {"--host", "127.0.0.1", "--port", std::to_string(nobody_listens.port()), "--send", "x"});
  EXPECT_TRUE(exited_with(run, 1)) << testing_support::describe(run.status);
  EXPECT_EQ(run.all_err(), "sock_client: cannot connect to 127.0.0.1:" +
                               std::to_string(nobody_listens.port()) + "\n");
}

// With and without input: input is held by the TLS layer until the handshake completes, and
// the connection must not wait for it to drain.
TEST(SockClientTest, TlsPeerThatClosesDuringTheHandshakeFailsAtOnce) {
  const testing_support::Listener listener = testing_support::listen_loopback();
  ASSERT_GE(listener.fd, 0);
  const int deadline_ms = static_cast<int>(std::chrono::milliseconds(kDeadline).count());
  for (const char* input : {"x", ""}) {
    ServerProcess client({kClient, "--host", "127.0.0.1", "--port",
                          std::to_string(listener.port), "--tls", "--send", input},
                         kDeadline, {.stderr_to = ChildStderr::kOwnPipe});
    ASSERT_TRUE(client.started());
    pollfd p = {listener.fd, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, deadline_ms), 1);
    const int accepted = accept(listener.fd, nullptr, nullptr);
    ASSERT_GE(accepted, 0);
    // The ClientHello (one write) is read first: closing with unread bytes would send a RST.
    p = {accepted, POLLIN, 0};
    char hello[4096];
    ASSERT_EQ(poll(&p, 1, deadline_ms), 1);
    EXPECT_GT(recv(accepted, hello, sizeof hello, 0), 0);
    close(accepted);  // a FIN instead of an answer
    const int status = client.wait_exit();
    EXPECT_TRUE(testing_support::exited_with(status, 1))
        << "input '" << input << "': " << testing_support::describe(status);
    EXPECT_EQ(client.stderr_lines(),
              std::vector<std::string>{"sock_client: TLS: the peer closed during the handshake"})
        << "input '" << input << "'";
  }
  close(listener.fd);
}

// A peer that sends for ever and reads nothing: a thread of the test sends a pattern on the
// one connection it accepts until that connection fails (the client closed it or exited) or
// the test stops it. Its chunks are not a multiple of 16 KiB, so that the client's socket
// seldom drains just as the client has read a round number of bytes.
class Streamer {
 public:
  Streamer() : listener_(testing_support::listen_loopback()), thread_([this] { run(); }) {}
  ~Streamer() {
    stop_ = true;
    thread_.join();
    close(listener_.fd);
  }
  Streamer(const Streamer&) = delete;
  Streamer& operator=(const Streamer&) = delete;
  int port() const { return listener_.port; }

 private:
  // Polls at most 100 ms at a time, so that stop_ is seen; the listener is non-blocking.
  bool wait_until(int fd, short events) {
    pollfd p = {fd, events, 0};
    while (!stop_) {
      if (poll(&p, 1, 100) == 1) return true;
    }
    return false;
  }

  void run() {
    if (!wait_until(listener_.fd, POLLIN)) return;
    const int fd = accept(listener_.fd, nullptr, nullptr);
    if (fd < 0) return;
    const std::string chunk = testing_support::pattern(100000, 7);
    while (wait_until(fd, POLLOUT)) {
      if (send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
          errno != EAGAIN && errno != EINTR) {
        break;
      }
    }
    close(fd);
  }

  testing_support::Listener listener_;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: started once the members it uses are
};

// --expect-bytes is checked as bytes come: the client stops reading within one read (16 KiB)
// past N. It read on until a read found its socket empty, which a peer that keeps the socket
// full (faster than stdout takes the bytes) never lets happen: the run never ended. Over
// loopback the socket still empties now and then, so what shows here is the reading past N.
TEST(SockClientTest, ExpectBytesEndsTheRunWhileThePeerKeepsSending) {
  const Streamer peer;
  const ClientRun run = run_client({"--host", "127.0.0.1", "--port", std::to_string(peer.port()),
                                    "--send", "", "--expect-bytes", "65536"});
  EXPECT_TRUE(exited_with(run, 0)) << testing_support::describe(run.status) << run.all_err();
  EXPECT_GE(run.out.size(), 65536u);
  EXPECT_LT(run.out.size(), 65536u + 16384u);
}

TEST(SockClientTest, BadCommandLinesExitWith2) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--port", "1"},                                              // no --host
           {"--host", "127.0.0.1", "--port", "1", "--alpn", "h2"},       // ALPN without --tls
           {"--host", "127.0.0.1", "--port", "1", "--send", "a\\q"},     // unknown escape
           {"--host", "127.0.0.1", "--port", "1", "--send", "\\x4"},     // cut escape
           {"--host", "127.0.0.1", "--port", "1", "--tls", "--alpn", "h2,"},  // empty name
           {"--host", "127.0.0.1", "--port", "1", "--timeout-ms", "-1"}  // not a number
       }) {
    const ClientRun run = run_client(args);
    EXPECT_TRUE(exited_with(run, 2))
        << args.back() << ": " << testing_support::describe(run.status);
    ASSERT_FALSE(run.err.empty());
    EXPECT_EQ(run.err[0].rfind("sock_client: ", 0), 0u) << run.err[0];
  }
}

}  // namespace
