// tools/http_server --tls-cert/--tls-key as a real process (port 0, two shards), spoken to by
// real clients: curl, openssl s_client, Python's ssl module (tls_client.py), wrk, OpenSSL's
// client in this process (renegotiation), and plain sockets (bad input). Certificates come
// from tests/testing/tls_certs.h (made under $TEST_TMPDIR). Every client is a child process
// or a socket with a deadline; the server must exit 0 on SIGTERM after each test.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/metrics_text.h"
#include "tests/testing/server_process.h"
#include "tests/testing/tls_certs.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::describe;
using testing_support::exited_with;
using testing_support::series_value;
using testing_support::ServerProcess;
using testing_support::test_pki;

// Runfiles paths, relative to the test's working directory.
constexpr char kServer[] = "tools/http_server";
constexpr char kPythonClient[] = "tests/tools/tls_client.py";
constexpr char kPython[] = "/usr/bin/python3";
constexpr char kCurl[] = "/usr/bin/curl";
constexpr char kOpenssl[] = "/usr/bin/openssl";
constexpr char kWrk[] = "/usr/bin/wrk";
constexpr auto kDeadline = std::chrono::seconds(20);

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// How a client process exited, and what it printed (stdout and stderr).
struct Exit {
  int status = -1;
  std::string output;
};

Exit run(const std::vector<std::string>& args) {
  Exit r;
  ServerProcess child(args, kDeadline, /*stderr_too=*/true);
  if (!child.started()) {
    r.output = "cannot run " + args[0] + ": " + std::strerror(child.spawn_error());
    return r;
  }
  r.status = child.wait_exit(&r.output);
  return r;
}

// A shell command (for clients that read their input from a pipe).
Exit shell(const std::string& command) { return run({"/bin/sh", "-c", command}); }

class HttpServerTlsTest : public ::testing::Test {
 protected:
  // Starts http_server with TLS (unless `tls` is false) and `flags`; call it under
  // ASSERT_NO_FATAL_FAILURE.
  void start(const std::vector<std::string>& flags = {}, bool tls = true) {
    const auto& pki = test_pki();
    std::vector<std::string> args = {kServer, "--port", "0", "--threads", "2"};
    if (tls) {
      args.insert(args.end(), {"--tls-cert", pki.localhost.cert, "--tls-key", pki.localhost.key});
    }
    args.insert(args.end(), flags.begin(), flags.end());
    server_ = std::make_unique<ServerProcess>(args, kDeadline);
    ASSERT_TRUE(server_->started());
    const std::string line = server_->first_line();
    const char* format = tls ? "http_server listening on https://0.0.0.0:%d/"
                             : "http_server listening on http://0.0.0.0:%d/";
    ASSERT_EQ(std::sscanf(line.c_str(), format, &port_), 1) << "first line: " << line;
    ASSERT_GT(port_, 0);
    base_ = "https://localhost:" + std::to_string(port_);
    resolve_ = "localhost:" + std::to_string(port_) + ":127.0.0.1";
  }

  void TearDown() override {
    if (server_) {
      const int status = server_->stop();
      EXPECT_TRUE(exited_with(status, 0)) << describe(status);
    }
  }

  // curl verifying the server against the test CA for "localhost" (resolved to 127.0.0.1: the
  // server listens on IPv4), with `args` after.
  Exit curl(const std::vector<std::string>& args) {
    std::vector<std::string> all = {kCurl,      "--silent",    "--show-error",
                                    "--cacert", test_pki().ca, "--resolve",
                                    resolve_,   "--max-time",  "10"};
    all.insert(all.end(), args.begin(), args.end());
    return run(all);
  }

  Exit python(const std::vector<std::string>& args) {
    std::vector<std::string> all = {kPython, kPythonClient, args[0], std::to_string(port_),
                                    test_pki().ca};
    all.insert(all.end(), args.begin() + 1, args.end());
    return run(all);
  }

  // GET /metrics over TLS (the server must run with --metrics), again until `series` has
  // `value` or the deadline passes: a client sees its connection closed before the server's
  // thread has run the close's accounting (on_clear follows close(2)).
  std::string metrics_when(const std::string& series, double value) {
    const auto end = std::chrono::steady_clock::now() + kDeadline;
    std::string text;
    do {
      const Exit r = curl({base_ + "/metrics"});
      EXPECT_TRUE(exited_with(r.status, 0)) << r.output;
      text = r.output;
    } while (series_value(text, series) != value && std::chrono::steady_clock::now() < end);
    return text;
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  std::string base_, resolve_;
};

TEST_F(HttpServerTlsTest, CurlGetsHelloOverVerifiedTlsWithAlpnHttp11) {
  ASSERT_NO_FATAL_FAILURE(start());
  // curl offers h2 first: the server picks the one it has.
  const Exit r =
      curl({"--verbose", "--write-out", "\\n%{http_version} %{ssl_verify_result}\\n", base_ + "/"});
  ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
  EXPECT_TRUE(contains(r.output, "Hello World!\n1.1 0\n")) << r.output;
  EXPECT_TRUE(contains(r.output, "ALPN: server accepted http/1.1")) << r.output;
}

TEST_F(HttpServerTlsTest, CurlKeepsOneConnectionForTwoUrls) {
  ASSERT_NO_FATAL_FAILURE(start());
  const Exit r = curl({"--write-out", "[%{num_connects}]", base_ + "/", base_ + "/missing"});
  ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
  EXPECT_EQ(r.output, "Hello World![1]Not Found[0]");
}

TEST_F(HttpServerTlsTest, CurlDownloadsAFileByteExact) {
  const std::string root = test_pki().dir + "/www";
  ASSERT_EQ(mkdir(root.c_str(), 0755), 0);
  std::string content((std::size_t{1} << 20) + 17, '\0');
  for (std::size_t i = 0; i < content.size(); ++i)
    content[i] = static_cast<char>(i * 131 + i / 251);
  {
    std::ofstream out(root + "/big.bin", std::ios::binary);
    out << content;
  }
  ASSERT_NO_FATAL_FAILURE(start({"--root", root}));
  const std::string copy = test_pki().dir + "/big.copy";
  const Exit r = curl({"--output", copy, base_ + "/big.bin"});
  ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
  const std::string got = read_file(copy);
  EXPECT_EQ(got.size(), content.size());
  EXPECT_TRUE(got == content)
      << "first difference at byte "
      << std::mismatch(got.begin(), got.end(), content.begin(), content.end()).first - got.begin();
}

// openssl s_client with each version forced: the protocol, ALPN and verification it reports,
// and the response to a request it sent.
TEST_F(HttpServerTlsTest, OpensslClientSpeaksTls12AndTls13) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (const std::string version : {"1_2", "1_3"}) {
    const Exit r =
        shell("printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | " +
              std::string(kOpenssl) + " s_client -tls" + version + " -connect 127.0.0.1:" +
              std::to_string(port_) + " -servername localhost -verify_hostname localhost -CAfile " +
              test_pki().ca + " -verify_return_error -alpn http/1.1 -ign_eof");
    SCOPED_TRACE(version);
    ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
    std::string expected_version = "TLSv" + version;
    expected_version[5] = '.';
    EXPECT_TRUE(contains(r.output, "New, " + expected_version + ", Cipher is ")) << r.output;
    EXPECT_TRUE(contains(r.output, "ALPN protocol: http/1.1")) << r.output;
    EXPECT_TRUE(contains(r.output, "Verify return code: 0 (ok)")) << r.output;
    EXPECT_TRUE(contains(r.output, "HTTP/1.1 200 OK\r\n")) << r.output;
    EXPECT_TRUE(contains(r.output, "Hello World!")) << r.output;
  }
}

TEST_F(HttpServerTlsTest, PythonVerifiesTheServerAndNegotiatesHttp11) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (const std::string version : {"tls1.2", "tls1.3"}) {
    const Exit r = python({"verify", version});
    ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
    EXPECT_TRUE(contains(r.output, version == "tls1.2" ? "version=TLSv1.2\n" : "version=TLSv1.3\n"))
        << r.output;
    EXPECT_TRUE(contains(r.output, "alpn=http/1.1\nstatus=HTTP/1.1 200 OK\nbody=Hello World!\n"))
        << r.output;
  }
}

// The second connection resumes the first's session. With two shards, round-robin placement
// gives consecutive connections to different shards, which share the ticket keys
// (tests/engine/tls/ticket_keys_test proves that on reactors it controls).
TEST_F(HttpServerTlsTest, PythonResumesTheSessionOnAnotherShard) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (const std::string version : {"tls1.2", "tls1.3"}) {
    const Exit r = python({"resume", version});
    ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
    EXPECT_TRUE(contains(r.output, "first_reused=False\nreused=True\n")) << r.output;
    EXPECT_TRUE(contains(r.output, "status=HTTP/1.1 200 OK\nbody=Hello World!\n")) << r.output;
  }
}

TEST_F(HttpServerTlsTest, PipelinedRequestsInOneRecordAreAnsweredInOrder) {
  ASSERT_NO_FATAL_FAILURE(start());
  const Exit r = python({"pipeline"});
  ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
  EXPECT_EQ(r.output,
            "status=HTTP/1.1 200 OK\nbody=Hello World!\n"
            "status=HTTP/1.1 404 Not Found\nbody=Not Found\nleft=0\n");
}

TEST_F(HttpServerTlsTest, WrkOverHttpsHasNoErrors) {
  if (access(kWrk, X_OK) != 0) GTEST_SKIP() << kWrk << " is not installed (tools/deps --bench)";
  ASSERT_NO_FATAL_FAILURE(start());
  const Exit r =
      run({kWrk, "-t1", "-c8", "-d1s", "https://127.0.0.1:" + std::to_string(port_) + "/"});
  ASSERT_TRUE(exited_with(r.status, 0)) << r.output;
  long requests = 0;
  const std::size_t at = r.output.find(" requests in ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::size_t start_of_number = r.output.rfind('\n', at) + 1;
  requests = std::atol(r.output.c_str() + start_of_number);
  EXPECT_GT(requests, 0) << r.output;
  // wrk prints these lines only when there were any.
  EXPECT_FALSE(contains(r.output, "Socket errors")) << r.output;
  EXPECT_FALSE(contains(r.output, "Non-2xx or 3xx responses")) << r.output;
}

// A TLS 1.2 renegotiation is refused; the server goes on serving.
TEST_F(HttpServerTlsTest, RenegotiationIsRefusedAndTheServerGoesOn) {
  ASSERT_NO_FATAL_FAILURE(start());
  testing_support::TlsClientConfig config(test_pki().ca, "http/1.1", TLS1_2_VERSION);
  testing_support::TlsClient peer(config, port_, "localhost");
  peer.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
  ASSERT_TRUE(peer.run([&] { return contains(peer.received(), "Hello World!"); })) << peer.error();
  ASSERT_TRUE(peer.renegotiate());
  peer.run([&] { return !peer.renegotiating(); });
  EXPECT_TRUE(peer.failed()) << "the renegotiation completed";
  EXPECT_TRUE(contains(peer.error(), "no renegotiation")) << peer.error();
  const Exit r = curl({base_ + "/"});
  EXPECT_TRUE(exited_with(r.status, 0)) << r.output;
  EXPECT_EQ(r.output, "Hello World!");
}

// A TLS client on a plain port: the server answers its ClientHello as a bad HTTP request, the
// client fails its handshake at once (no hang), and plain clients are still served.
TEST_F(HttpServerTlsTest, TlsClientOnAPlainPortFailsAtOnce) {
  ASSERT_NO_FATAL_FAILURE(start({}, /*tls=*/false));
  const Exit r = curl({"https://localhost:" + std::to_string(port_) + "/"});
  EXPECT_EQ(WEXITSTATUS(r.status), 35) << r.output;  // CURLE_SSL_CONNECT_ERROR
  EXPECT_TRUE(contains(r.output, "wrong version number")) << r.output;
  const Exit plain = run({kCurl, "--silent", "--show-error", "--max-time", "10",
                          "http://127.0.0.1:" + std::to_string(port_) + "/"});
  EXPECT_TRUE(exited_with(plain.status, 0)) << plain.output;
  EXPECT_EQ(plain.output, "Hello World!");
}

// A plain HTTP client on the TLS port gets no HTTP answer, only a close, counted as a
// protocol failure in /metrics (with the other libsock_tls_ families).
TEST_F(HttpServerTlsTest, PlainHttpOnTheTlsPortIsClosedAndCounted) {
  ASSERT_NO_FATAL_FAILURE(start({"--metrics"}));
  const int fd = testing_support::connect_client(port_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(testing_support::send_all(fd, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  char buf[256];
  const ssize_t n = recv(fd, buf, sizeof buf, 0);
  EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET))
      << "got " << (n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::strerror(errno));
  close(fd);
  // The one asking for the metrics is the only connection left.
  const std::string text = metrics_when("libsock_tls_connections", 1);
  EXPECT_EQ(series_value(text, "libsock_tls_connections"), 1) << text;
  EXPECT_EQ(series_value(text, "libsock_tls_handshake_failures_total{reason=\"protocol\"}"), 1)
      << text;
  EXPECT_EQ(series_value(text, "libsock_tls_handshake_failures_total{reason=\"timeout\"}"), 0)
      << text;
  EXPECT_GE(series_value(text, "libsock_tls_handshakes_total{kind=\"full\"}"), 1) << text;
  EXPECT_TRUE(contains(text, "# TYPE libsock_tls_handshake_seconds histogram")) << text;
}

// --tls-handshake-timeout-ms: a client that stops mid-handshake is closed, counted as such.
TEST_F(HttpServerTlsTest, HandshakeTimeoutFlagClosesAStalledClient) {
  ASSERT_NO_FATAL_FAILURE(start({"--metrics", "--tls-handshake-timeout-ms", "200"}));
  const int fd = testing_support::connect_client(port_);
  ASSERT_GE(fd, 0);
  // The start of a handshake record (so that the connection is accepted: TCP_DEFER_ACCEPT).
  ASSERT_TRUE(testing_support::send_all(fd, std::string("\x16\x03\x01\x00\xc8", 5)));
  char c;
  const auto before = std::chrono::steady_clock::now();
  const ssize_t n = recv(fd, &c, 1, 0);  // the socket's own timeout is 10 s
  EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << std::strerror(errno);
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(9));
  close(fd);
  const std::string series = "libsock_tls_handshake_failures_total{reason=\"timeout\"}";
  const std::string text = metrics_when(series, 1);
  EXPECT_EQ(series_value(text, series), 1) << text;
}

// A name the server has no certificate for: it serves its certificate, and a client verifying
// that name refuses it and says why.
TEST_F(HttpServerTlsTest, UnknownServerNameFailsVerification) {
  ASSERT_NO_FATAL_FAILURE(start());
  const Exit r = run({kCurl, "--silent", "--show-error", "--cacert", test_pki().ca, "--resolve",
                      "unknown.example:" + std::to_string(port_) + ":127.0.0.1", "--max-time", "10",
                      "https://unknown.example:" + std::to_string(port_) + "/"});
  EXPECT_EQ(WEXITSTATUS(r.status), 60) << r.output;  // CURLE_PEER_FAILED_VERIFICATION
  EXPECT_TRUE(contains(r.output, "'unknown.example'")) << r.output;
}

TEST_F(HttpServerTlsTest, TlsFlagsAreCheckedAtStart) {
  const auto& pki = test_pki();
  std::string output;
  ServerProcess alone({kServer, "--port", "0", "--tls-cert", pki.localhost.cert}, kDeadline,
                      /*stderr_too=*/true);
  int status = alone.wait_exit(&output);
  EXPECT_TRUE(exited_with(status, 2)) << describe(status);
  EXPECT_TRUE(contains(output, "are given together or not at all")) << output;

  output.clear();
  ServerProcess mismatched(
      {kServer, "--port", "0", "--tls-cert", pki.localhost.cert, "--tls-key", pki.other.key},
      kDeadline, /*stderr_too=*/true);
  status = mismatched.wait_exit(&output);
  EXPECT_TRUE(exited_with(status, 1)) << describe(status);
  EXPECT_TRUE(contains(output, "http_server: cannot serve TLS: cannot use private key")) << output;
}

}  // namespace
