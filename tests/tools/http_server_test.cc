// tools/http_server as a real process: started with --port 0, spoken to over loopback, stopped
// with SIGTERM (which must exit with status 0). Responses carry a Date header whose value
// changes once a second: comparisons replace every Date value with "<date>" first.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/server_process.h"

namespace {

using testing_support::connect_loopback;
using testing_support::describe;
using testing_support::exited_with;
using testing_support::ServerProcess;

// Runfiles path, relative to the test's working directory.
constexpr char kBinary[] = "tools/http_server";
constexpr auto kDeadline = std::chrono::seconds(20);
constexpr char kNoEof[] = "<no EOF>";

const std::string kGet =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: http_server_test\r\n\r\n";

// The responses, with the Date value normalised.
std::string response(const std::string& status, const std::string& body, bool keep_alive,
                     bool head = false, const std::string& extra = "") {
  std::string r = "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(body.size()) +
                  "\r\nContent-Type: text/plain\r\nDate: <date>\r\n" + extra +
                  (keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  return head ? r : r + body;
}
const std::string kHello = response("200 OK", "Hello World!", true);
const std::string kHelloClose = response("200 OK", "Hello World!", false);
const std::string kNotFound = response("404 Not Found", "Not Found", true);

std::string error_response(int status, const std::string& reason) {
  return response(std::to_string(status) + " " + reason, reason, false);
}

// Replaces the value of every "Date: " header with "<date>". Each one must be an IMF-fixdate
// ("Sun, 06 Nov 1994 08:49:37 GMT", 29 characters); one that is not stays as it was, so the
// comparison fails.
std::string normalise(const std::string& s) {
  std::string out;
  std::size_t from = 0;
  for (std::size_t at; (at = s.find("\r\nDate: ", from)) != std::string::npos;) {
    const std::size_t value = at + 8;
    const std::size_t end = s.find("\r\n", value);
    std::tm tm = {};
    const bool fixdate = end != std::string::npos && end - value == 29 &&
                         s.compare(end - 4, 4, " GMT") == 0 &&
                         strptime(s.substr(value, 29).c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    out.append(s, from, value - from);
    if (fixdate) {
      out += "<date>";
      from = end;
    } else {
      from = value;
    }
  }
  out.append(s, from, std::string::npos);
  return out;
}

std::string repeat(const std::string& s, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += s;
  return out;
}

// A blocking loopback client whose reads and writes give up after 10 s instead of hanging.
int connect_client(int port) {
  const int fd = connect_loopback(port);
  if (fd < 0) return -1;
  const timeval timeout = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool send_all(int fd, const std::string& data) {
  for (std::size_t off = 0; off < data.size();) {
    const ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Exactly `count` bytes, or fewer if the peer closed or went quiet for 10 s.
std::string recv_exact(int fd, std::size_t count) {
  std::string got(count, '\0');
  std::size_t have = 0;
  while (have < count) {
    const ssize_t n = recv(fd, got.data() + have, count - have, 0);
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  got.resize(have);
  return got;
}

// Everything until the server's EOF, normalised; kNoEof appended if none came within 10 s
// (or the connection was reset).
std::string read_to_eof(int fd) {
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
  return normalise(got) + (n == 0 ? "" : kNoEof);
}

// Ends the client's side, then read_to_eof().
std::string finish(int fd) {
  shutdown(fd, SHUT_WR);
  return read_to_eof(fd);
}

// One response: the head up to "\r\n\r\n", then Content-Length bytes; normalised.
std::string read_response(int fd) {
  std::string got;
  char c;
  while (got.find("\r\n\r\n") == std::string::npos && recv(fd, &c, 1, 0) == 1) got += c;
  const std::size_t at = got.find("\r\nContent-Length: ");
  if (at == std::string::npos) return got;
  got += recv_exact(fd, std::stoul(got.substr(at + 18)));
  return normalise(got);
}

class HttpServerTest : public ::testing::Test {
 protected:
  // Starts the server with `flags` after "--port 0"; call as ASSERT_NO_FATAL_FAILURE(start(..)).
  void start(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {kBinary, "--port", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    server_ = std::make_unique<ServerProcess>(args, kDeadline);
    ASSERT_TRUE(server_->started());
    const std::string line = server_->first_line();
    ASSERT_EQ(std::sscanf(line.c_str(), "http_server listening on http://0.0.0.0:%d/", &port_), 1)
        << "first line: " << line;
    ASSERT_GT(port_, 0);
  }

  void TearDown() override {
    if (server_) {
      const int status = server_->stop();
      EXPECT_TRUE(exited_with(status, 0)) << describe(status);
    }
    for (const int fd : clients_) close(fd);
  }

  int client() {
    const int fd = connect_client(port_);
    if (fd >= 0) clients_.push_back(fd);
    return fd;
  }

  // Sends `request` on a new connection and returns all the server sent until its EOF.
  std::string exchange(const std::string& request) {
    const int fd = client();
    if (fd < 0 || !send_all(fd, request)) return "<send failed>";
    return read_to_eof(fd);
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  std::vector<int> clients_;
};

TEST_F(HttpServerTest, KeepAliveConnectionAnswersSequentialRequests) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(send_all(fd, kGet));
    ASSERT_EQ(read_response(fd), kHello) << "request " << i;
    ASSERT_TRUE(send_all(fd, "GET /missing HTTP/1.1\r\n\r\n"));
    ASSERT_EQ(read_response(fd), kNotFound) << "request " << i;
  }
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerTest, DateHeaderIsCurrent) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, kGet));
  std::string head;
  char c;
  while (head.find("\r\n\r\n") == std::string::npos && recv(fd, &c, 1, 0) == 1) head += c;
  const std::size_t at = head.find("\r\nDate: ");
  ASSERT_NE(at, std::string::npos) << head;
  std::tm tm = {};
  ASSERT_NE(strptime(head.c_str() + at + 8, "%a, %d %b %Y %H:%M:%S GMT", &tm), nullptr) << head;
  const long skew = static_cast<long>(timegm(&tm) - std::time(nullptr));
  EXPECT_LE(std::labs(skew), 2) << head;
}

TEST_F(HttpServerTest, HeadAndOtherMethodsAndQueries) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  // HEAD: the GET's head, no body; read as bytes (its Content-Length announces 12). Every
  // Date value is 29 bytes where "<date>" is 6.
  ASSERT_TRUE(send_all(fd, "HEAD / HTTP/1.1\r\n\r\n"));
  const std::string head = response("200 OK", "Hello World!", true, true);
  ASSERT_TRUE(send_all(fd, "GET /?a=b HTTP/1.1\r\n\r\n"));
  const std::string got = recv_exact(fd, head.size() + kHello.size() + 2 * (29 - 6));
  EXPECT_EQ(normalise(got), head + kHello);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
  EXPECT_EQ(read_response(fd), response("405 Method Not Allowed", "Method Not Allowed", true, false,
                                        "Allow: GET, HEAD\r\n"));
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerTest, ThousandPipelinedRequestsInOneWriteAreAnsweredInOrder) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  // Three kinds of request in turn, so that responses out of order would show.
  const std::string requests[] = {kGet, "GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n",
                                  "HEAD / HTTP/1.1\r\n\r\n"};
  const std::string answers[] = {kHello, kNotFound, response("200 OK", "Hello World!", true, true)};
  std::string input, expected;
  for (int i = 0; i < 1000; ++i) {
    input += requests[i % 3];
    expected += answers[i % 3];
  }
  ASSERT_TRUE(send_all(fd, input));
  // Every Date value is 29 bytes where "<date>" is 6.
  const std::string got = recv_exact(fd, expected.size() + 1000 * (29 - 6));
  EXPECT_TRUE(normalise(got) == expected) << "got " << got.size() << " bytes";
  EXPECT_EQ(finish(fd), "");  // not one response more
}

TEST_F(HttpServerTest, PipelineSplitAtEveryByteGivesTheSameBytes) {
  // One shard: a round trip on `barrier` after the first part means the server has read it
  // before the second part is sent, so the two parts arrive in separate reads.
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string input = kGet + "GET /other?x=1 HTTP/1.1\r\nAccept: */*\r\n\r\n" +
                            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
  const std::string expected = kHello + kNotFound + kHelloClose;
  ASSERT_EQ(exchange(input), expected);
  const int barrier = client();
  ASSERT_GE(barrier, 0);
  for (std::size_t split = 1; split < input.size(); ++split) {
    const int fd = connect_client(port_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, input.substr(0, split)));
    ASSERT_TRUE(send_all(barrier, kGet));
    ASSERT_EQ(read_response(barrier), kHello);
    ASSERT_TRUE(send_all(fd, input.substr(split)));
    const std::string got = read_to_eof(fd);
    close(fd);
    ASSERT_EQ(got, expected) << "split at byte " << split;
  }
}

TEST_F(HttpServerTest, Http10ClosesAfterTheResponse) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  EXPECT_EQ(exchange("GET / HTTP/1.0\r\n\r\n"), kHelloClose);
  // Requests after it are not answered.
  EXPECT_EQ(exchange("GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n"), kHelloClose);
}

TEST_F(HttpServerTest, Http10KeepAliveStaysOpen) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(send_all(fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    ASSERT_EQ(read_response(fd), kHello) << "request " << i;
  }
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerTest, ConnectionCloseClosesAfterTheResponse) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  EXPECT_EQ(exchange(kGet + "GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + kGet),
            kHello + kHelloClose);
}

TEST_F(HttpServerTest, MalformedRequestGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(exchange("GARBAGE\r\n\r\n"), bad);
  EXPECT_EQ(exchange("GET / HTTP/9.9\r\n\r\n"), bad);
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), bad);
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), bad);
  EXPECT_EQ(exchange(std::string("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 27)), bad);
  // The requests before the bad one are answered first, in order.
  EXPECT_EQ(exchange(kGet + kGet + "NOT HTTP AT ALL\r\n\r\n" + kGet), kHello + kHello + bad);
  // Both Content-Length and Transfer-Encoding: rejected (request smuggling).
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0\r\n\r\n"),
            bad);
}

TEST_F(HttpServerTest, MalformedRequestSplitByteByByteGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  // Up to the byte that makes it malformed (a version that is not a digit), and not beyond:
  // bytes sent after the server closed would make the client's kernel answer with a reset.
  const std::string input = kGet + "GET / HTTP/X";
  for (const char c : input) ASSERT_TRUE(send_all(fd, std::string(1, c)));
  EXPECT_EQ(read_to_eof(fd), kHello + error_response(400, "Bad Request"));
}

TEST_F(HttpServerTest, OversizedRequestsGetTheirStatusAndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  EXPECT_EQ(exchange("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n"),
            error_response(414, "URI Too Long"));
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nX-Big: " + std::string(20000, 'v') + "\r\n\r\n"),
            error_response(431, "Request Header Fields Too Large"));
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\n" + repeat("X-Many: 1\r\n", 101) + "\r\n"),
            error_response(431, "Request Header Fields Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"),
            error_response(413, "Content Too Large"));
  // A chunked body is refused at the chunk size that takes it over the limit.
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\nabc"),
            error_response(413, "Content Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n" +
                     std::string(0x80000, 'b') + "\r\n80001\r\n"),
            error_response(413, "Content Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            error_response(501, "Not Implemented"));
  // Within the limits: answered.
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /?" + std::string(8000, 'q') + " HTTP/1.1\r\n" +
                               repeat("X-Many: 1\r\n", 100) + "\r\n"));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerTest, IncompleteHeadersCloseAtTheHeaderDeadline) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--header-timeout-ms", "300"}));
  const int slow = client();
  const int idle = client();
  const int answered = client();
  ASSERT_GE(slow, 0);
  ASSERT_GE(idle, 0);
  ASSERT_GE(answered, 0);
  // `answered` has one whole request done: between requests, no deadline runs.
  ASSERT_TRUE(send_all(answered, kGet));
  ASSERT_EQ(read_response(answered), kHello);
  const auto begin = std::chrono::steady_clock::now();
  ASSERT_TRUE(send_all(slow, "GET / HTTP/1.1\r\nHost: x\r\n"));
  // Trickling bytes does not extend it.
  for (int i = 0; i < 4; ++i) {
    usleep(50 * 1000);
    ASSERT_TRUE(send_all(slow, "X: y\r\n"));
  }
  EXPECT_EQ(read_to_eof(slow), "");  // closed without a response
  const auto waited = std::chrono::steady_clock::now() - begin;
  EXPECT_GE(waited, std::chrono::milliseconds(250));
  EXPECT_LT(waited, std::chrono::seconds(5));
  // Idle connections, before their first request or between two, are still open.
  ASSERT_TRUE(send_all(idle, kGet));
  EXPECT_EQ(read_response(idle), kHello);
  ASSERT_TRUE(send_all(answered, kGet));
  EXPECT_EQ(read_response(answered), kHello);
  // A head split over reads that completes in time is answered, and its deadline does not
  // carry over to the connection's next request.
  ASSERT_TRUE(send_all(answered, "GET / HTTP/1.1\r\n"));
  usleep(100 * 1000);
  ASSERT_TRUE(send_all(answered, "\r\n"));
  EXPECT_EQ(read_response(answered), kHello);
  usleep(400 * 1000);
  ASSERT_TRUE(send_all(answered, kGet));
  EXPECT_EQ(read_response(answered), kHello);
  EXPECT_EQ(finish(answered), "");
}

TEST_F(HttpServerTest, RandomBytesNeverCrashTheServer) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  unsigned seed = 12345;
  auto next = [&seed] {
    seed = seed * 1103515245u + 12345u;
    return seed >> 16;
  };
  const std::string prefixes[] = {"", "GET / HTTP/1.1\r\n", "POST / HTTP/1.1\r\n",
                                  "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"};
  for (int i = 0; i < 200; ++i) {
    std::string junk = prefixes[i % 4];
    const std::size_t size = next() % (i < 190 ? 512 : 200000);
    for (std::size_t k = 0; k < size; ++k) junk += static_cast<char>(next());
    const int fd = connect_client(port_);
    ASSERT_GE(fd, 0);
    send_all(fd, junk);  // may fail: the server may close (and reset) first
    shutdown(fd, SHUT_WR);
    char buf[4096];
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
    close(fd);
  }
  // Still serving.
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, kGet));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

TEST(HttpServerFlagsTest, BadHeaderTimeoutIsRefusedWithStatus2) {
  ServerProcess server({kBinary, "--header-timeout-ms", "soon"}, kDeadline);
  ASSERT_TRUE(server.started());
  const int status = server.wait_exit();
  EXPECT_TRUE(exited_with(status, 2)) << describe(status);
}

TEST(HttpServerFlagsTest, HelpExitsWith0) {
  ServerProcess server({kBinary, "--help"}, kDeadline);
  ASSERT_TRUE(server.started());
  EXPECT_EQ(server.first_line().rfind("usage: http_server", 0), 0u);
  const int status = server.wait_exit();
  EXPECT_TRUE(exited_with(status, 0)) << describe(status);
}

}  // namespace
