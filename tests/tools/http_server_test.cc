// tools/http_server as a real process: started with --port 0, spoken to over loopback, stopped
// with SIGTERM (which must exit with status 0). Responses carry a Date header whose value
// changes once a second: comparisons replace every Date value with "<date>" first.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "tests/testing/server_process.h"

namespace {

using testing_support::connect_client;
using testing_support::recv_exact;
using testing_support::repeat;
using testing_support::send_all;
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
const std::string kNotAllowed =
    response("405 Method Not Allowed", "Method Not Allowed", true, false, "Allow: GET, HEAD\r\n");

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

  // Sends `request` with kGet behind it in the same write on a new connection, ends the
  // client's side and returns all the server sent until its EOF. kGet's answer shows where the
  // server took `request` to end; after a rejected request there must be none, since bytes
  // behind a framing error cannot be trusted to start a request.
  std::string with_get_behind(const std::string& request) {
    const int fd = client();
    if (fd < 0 || !send_all(fd, request + kGet)) return "<send failed>";
    return finish(fd);
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
    ASSERT_TRUE(send_all(fd, "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"));
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
  ASSERT_TRUE(send_all(fd, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string head = response("200 OK", "Hello World!", true, true);
  ASSERT_TRUE(send_all(fd, "GET /?a=b HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string got = recv_exact(fd, head.size() + kHello.size() + 2 * (29 - 6));
  EXPECT_EQ(normalise(got), head + kHello);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"));
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
                                  "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"};
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
  const std::string input = kGet + "GET /other?x=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n" +
                            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
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
  EXPECT_EQ(exchange(kGet + "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + kGet),
            kHello + kHelloClose);
}

TEST_F(HttpServerTest, MalformedRequestGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(exchange("GARBAGE\r\n\r\n"), bad);
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"), bad);
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"), bad);
  EXPECT_EQ(exchange(std::string("GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", 35)), bad);
  // The requests before the bad one are answered first, in order.
  EXPECT_EQ(exchange(kGet + kGet + "NOT HTTP AT ALL\r\n\r\n" + kGet), kHello + kHello + bad);
  // Both Content-Length and Transfer-Encoding: rejected (request smuggling).
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0\r\n\r\n"),
            bad);
}

TEST_F(HttpServerTest, MalformedRequestSplitByteByByteGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  // Up to the byte that makes it malformed (a protocol name other than HTTP), and not beyond:
  // bytes sent after the server closed would make the client's kernel answer with a reset.
  const std::string input = kGet + "GET / HTTQ";
  for (const char c : input) ASSERT_TRUE(send_all(fd, std::string(1, c)));
  EXPECT_EQ(read_to_eof(fd), kHello + error_response(400, "Bad Request"));
}

// --- Message framing (RFC 9112) -----------------------------------------------------------

TEST_F(HttpServerTest, IdenticalDuplicateContentLengthsGet400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  // RFC 9110 8.6 allows either rejecting these or using the one value; rejecting leaves
  // nothing that an intermediary could have framed differently.
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(
      with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
      bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
            bad);
}

TEST_F(HttpServerTest, ConflictingContentLengthsGet400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  // Either length would frame the body (and so the request behind it) differently: RFC 9112
  // 6.3 makes that an unrecoverable error.
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(
      with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
      bad);
  EXPECT_EQ(
      with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nContent-Length: 5\r\n\r\nhello!"),
      bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!"), bad);
  EXPECT_EQ(
      with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello"),
      bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\nhello"), bad);
}

TEST_F(HttpServerTest, ChunkExtensionsAreSkippedAndTheBodyEndsAtTheLastChunk) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  // Quoted values may hold ';' and spaces; extensions may have no value; the last chunk may
  // carry them too.
  for (const std::string body :
       {"5;name=value\r\nhello\r\n0\r\n\r\n", "5;name=\"v;a l\"\r\nhello\r\n0\r\n\r\n",
        "5;ext\r\nhello\r\n0;last=1\r\n\r\n", "5;a;b=c\r\nhello\r\n6;d=e\r\n world\r\n0\r\n\r\n"}) {
    EXPECT_EQ(with_get_behind(chunked + body), kNotAllowed + kHello) << body;
  }
  // A GET's body is framed the same way.
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5;name=value\r\nhello\r\n0\r\n\r\n"),
            kHello + kHello);
}

TEST_F(HttpServerTest, ChunkedTrailersAreSkipped) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  // The request ends at the empty line after the trailers, not at the last chunk. A
  // Content-Length among them frames nothing (RFC 9110 6.5.1: trailers may not change framing).
  for (const std::string body :
       {"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", "0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n",
        "5;a=b\r\nhello\r\n0;z=1\r\nX-Trailer: 1\r\n\r\n", "0\r\nContent-Length: 5\r\n\r\n"}) {
    EXPECT_EQ(with_get_behind(chunked + body), kNotAllowed + kHello) << body;
  }
}

TEST_F(HttpServerTest, MalformedTrailerLineGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind(chunked + "0\r\nBad Trailer\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind(chunked + "5\r\nhello\r\n0\r\nX-Trailer: 1\nX-Other: 2\r\n\r\n"), bad);
}

TEST_F(HttpServerTest, HeaderLineEndedByBareLfOrCrGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  // A bare LF or CR ending a field line is a line end to some parsers and not to others, so
  // the field boundaries (a Content-Length among them) would be ambiguous. (A bare LF ending
  // the request line or the empty line is accepted, as RFC 9112 2.2 allows: not covered here.)
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\nHost: x\n\n"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\nX: y\r\n\r\nhello"), bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\n\nhello"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n"), bad);
}

TEST_F(HttpServerTest, ChunkSizeLineEndedByBareLfGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind(chunked + "5\nhello\r\n0\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind(chunked + "5;name=value\nhello\r\n0\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind(chunked + "5\r\nhello\r\n0\n\r\n"), bad);
}

TEST_F(HttpServerTest, ObsFoldContinuesTheFieldValue) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  // RFC 9112 5.2 allows a server to reject obs-fold or to read it as a space; this one reads it.
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"), kHello + kHello);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nUser-Agent: a\r\n\tb\r\n c\r\nHost: x\r\n\r\n"),
            kHello + kHello);
  // A continuation line that looks like a framing header is part of the value before it: as a
  // Content-Length it would take the start of kGet as the body; as Transfer-Encoding, kGet as
  // a chunk size.
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n Content-Length: 5\r\n\r\n"),
            kHello + kHello);
  EXPECT_EQ(
      with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tTransfer-Encoding: chunked\r\n\r\n"),
      kHello + kHello);
  // Folded into a Connection value, "close" still closes.
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\nConnection:\r\n close\r\n\r\n"), kHelloClose);
}

TEST_F(HttpServerTest, ObsFoldInContentLengthOrBeforeTheFirstFieldGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string bad = error_response(400, "Bad Request");
  // Unfolded, the value is "5 6": not a length.
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n 6\r\n\r\nhello!"), bad);
  // Whitespace after the request line continues no field (RFC 9112 2.2: reject).
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\n X: a\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\n\tHost: x\r\n\r\n"), bad);
}

// Framing llhttp 8.1 lets through and the responder refuses (issue 10): a field without a
// name, and Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1). The request behind is not served.
TEST_F(HttpServerTest, EmptyFieldNameAndHttp10TransferEncodingGet400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5\r\nhello\r\n0\r\n\r\n"),
            bad);
  EXPECT_EQ(with_get_behind("POST / HTTP/1.0\r\nConnection: keep-alive\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            bad);
}

// Framing llhttp's lenient mode lets through (issue 10; strict mode refuses it), refused with
// the request behind it unanswered; tests/tools/http/responder_test.cc splits each at every
// byte.
TEST_F(HttpServerTest, ChunkDataNotEndedByCrlfGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind(chunked + "5\r\nhelloXX0\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind(chunked + "5\r\nhello\r0\r\n\r\n"), bad);
}

// A CR must be followed by LF wherever a line ends (RFC 9112 2.2); llhttp built without
// LLHTTP_STRICT_MODE skips whatever byte follows it in some states, so a request could end
// where a peer in front sees none end (or a field start where it sees none): two answers for
// what a proxy forwarded as one request, a Transfer-Encoding it never saw, a chunk it framed
// otherwise. Each gets 400 and the request behind it is never answered.
TEST_F(HttpServerTest, CrNotFollowedByLfGets400AndTheRequestBehindIsNotAnswered) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  // The head's last line end: "\rX" ended it, and "GET /b" was a request of its own.
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: x\r\n\rXGET /b HTTP/1.0\r\n\r\n"), bad);
  // An empty value ended by CR: the byte after it was swallowed, and the field after it read.
  EXPECT_EQ(with_get_behind("POST / HTTP/1.1\r\nHost: x\r\nX:\r_Transfer-Encoding: chunked\r\n\r\n"
                            "0\r\n\r\n"),
            bad);
  // A chunk-size line, and the line that ends the trailers.
  EXPECT_EQ(with_get_behind(chunked + "5\rXhello\r\n0\rY\r\n"), bad);
  EXPECT_EQ(with_get_behind(chunked + "0\r\n\rZ"), bad);
}

// RFC 9112 3.2: a request target is a URI, without whitespace or control bytes; llhttp's
// lenient mode lets a tab and a form feed through.
TEST_F(HttpServerTest, TabOrFormFeedInTheTargetGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind("GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("GET /a\fb HTTP/1.1\r\nHost: x\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("GET /\t HTTP/1.1\r\nHost: x\r\n\r\n"), bad);
}

TEST_F(HttpServerTest, TransferCodingOtherThanChunkedAloneGets501AndAFoldedOne400) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string post = "POST / HTTP/1.1\r\nHost: x\r\n";
  const std::string not_implemented = error_response(501, "Not Implemented");
  EXPECT_EQ(with_get_behind(post + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
            not_implemented);
  EXPECT_EQ(with_get_behind(post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            not_implemented);
  EXPECT_EQ(with_get_behind(post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
            error_response(400, "Bad Request"));
}

TEST_F(HttpServerTest, Http11WithoutOrWithTwoHostsGets400AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), bad);
  EXPECT_EQ(with_get_behind("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), bad);
}

// RFC 9112 3.2.2: a server must accept a target in absolute-form (as sent to a proxy) and
// read it as its path: "/" without one. The host in it is not looked at (no virtual hosts).
// It was 404, a path other than "/".
TEST_F(HttpServerTest, AbsoluteFormTargetIsAnsweredAsItsPath) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  for (const std::string target :
       {"http://x/", "http://x", "HTTPS://example.com:8443/?q=1", "http://u@x?q",
        "http://x/?a#f"}) {
    EXPECT_EQ(with_get_behind("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"), kHello + kHello)
        << target;
  }
  EXPECT_EQ(with_get_behind("GET http://x/missing HTTP/1.1\r\nHost: x\r\n\r\n"),
            kNotFound + kHello);
  EXPECT_EQ(with_get_behind("HEAD http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            response("200 OK", "Hello World!", true, true) + kHello);
  // A scheme we do not serve names no path of ours.
  EXPECT_EQ(with_get_behind("GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n"), kNotFound + kHello);
}

// RFC 9110 9.3.7: OPTIONS * asks about the server itself (a ping): 200, no content, the
// methods its resources take in Allow; the connection stays open. It was 404 (400 with
// --root, and a close).
TEST_F(HttpServerTest, OptionsAsteriskGets200WithAllow) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string options = response("200 OK", "", true, false, "Allow: GET, HEAD\r\n");
  EXPECT_EQ(with_get_behind("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), options + kHello);
  // OPTIONS of a resource is a method it does not take, as before; "*" with another method
  // is a path that is none of ours.
  EXPECT_EQ(with_get_behind("OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\n"), kNotAllowed + kHello);
  EXPECT_EQ(with_get_behind("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), kNotFound + kHello);
}

TEST_F(HttpServerTest, Http2VersionGets505AndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  EXPECT_EQ(with_get_behind("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            error_response(505, "HTTP Version Not Supported"));
}

// curl sends the head alone and waits (1 s) for a 100 before it sends the body.
TEST_F(HttpServerTest, ExpectContinueGets100BeforeTheBodyIsSent) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                           "Content-Length: 5\r\n\r\n"));
  EXPECT_EQ(recv_exact(fd, kContinue.size()), kContinue);
  ASSERT_TRUE(send_all(fd, "hello"));
  EXPECT_EQ(read_response(fd), kNotAllowed);
  EXPECT_EQ(finish(fd), "");
  // Over the body limit: 413 at once, the body never asked for.
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     "Content-Length: 2000000\r\n\r\n"),
            error_response(413, "Content Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n"),
            error_response(417, "Expectation Failed"));
}

// An error answered while the client is still uploading: the server's close lingers, so the
// rest of the upload is read and dropped, where a closed socket would answer it with a reset.
// The client reads the 413 and the server's EOF, sends more, and its connection is still
// there to shut down: its EOF lets the server close.
TEST_F(HttpServerTest, UploadPastTheLimitGets413AndTheRestOfItIsDrainedNotReset) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"));
  EXPECT_EQ(read_response(fd), error_response(413, "Content Too Large"));
  char c;
  ASSERT_EQ(recv(fd, &c, 1, 0), 0) << "no EOF after the 413, errno " << errno;
  ASSERT_TRUE(send_all(fd, std::string(256 * 1024, 'b'))) << "errno " << errno;
  // After a reset (the upload met a closed socket) there is no connection left to shut down.
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0) << "errno " << errno;
  EXPECT_EQ(read_to_eof(fd), "");
}

TEST_F(HttpServerTest, OversizedRequestsGetTheirStatusAndClose) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  EXPECT_EQ(exchange("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n"),
            error_response(414, "URI Too Long"));
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'v') + "\r\n\r\n"),
            error_response(431, "Request Header Fields Too Large"));
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\n" + repeat("X-Many: 1\r\n", 100) + "\r\n"),  // Host is the 101st
            error_response(431, "Request Header Fields Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"),
            error_response(413, "Content Too Large"));
  // A chunked body is refused at the chunk size that takes it over the limit.
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\nabc"),
            error_response(413, "Content Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n" +
                     std::string(0x80000, 'b') + "\r\n80001\r\n"),
            error_response(413, "Content Too Large"));
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            error_response(501, "Not Implemented"));
  // Within the limits: answered.
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /?" + std::string(8000, 'q') + " HTTP/1.1\r\nHost: x\r\n" +
                               repeat("X-Many: 1\r\n", 99) + "\r\n"));
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
  ASSERT_TRUE(send_all(answered, "GET / HTTP/1.1\r\nHost: x\r\n"));
  usleep(100 * 1000);
  ASSERT_TRUE(send_all(answered, "\r\n"));
  EXPECT_EQ(read_response(answered), kHello);
  usleep(400 * 1000);
  ASSERT_TRUE(send_all(answered, kGet));
  EXPECT_EQ(read_response(answered), kHello);
  EXPECT_EQ(finish(answered), "");
}

// A pipelining client whose every write completes one head and starts the next, each head
// complete well within the deadline, keeps being served for many deadlines: each head has the
// whole deadline from its first byte (before, the first head's deadline ran on and closed it).
TEST_F(HttpServerTest, EachPipelinedHeadHasTheWholeHeaderDeadline) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--header-timeout-ms", "300"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  const std::string head = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::size_t split = 5;  // "GET /" ends each write
  ASSERT_TRUE(send_all(fd, head.substr(0, split)));
  const auto begin = std::chrono::steady_clock::now();
  int answered = 0;
  while (std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(1500)) {
    usleep(30 * 1000);
    ASSERT_TRUE(send_all(fd, head.substr(split) + head.substr(0, split)));
    ASSERT_EQ(read_response(fd), kHello) << "after " << answered << " requests";
    ++answered;
  }
  ASSERT_TRUE(send_all(fd, head.substr(split)));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

// What trickle() saw end it.
enum class Trickled { kClosed, kAnswered, kOpen };
void PrintTo(Trickled t, std::ostream* os) {
  *os << (t == Trickled::kClosed ? "closed" : t == Trickled::kAnswered ? "answered" : "open");
}

// Sends `bytes` to fd one at a time, one every 40 ms (far faster than any idle timeout here),
// until the server closes the connection (EOF or a reset, on a read or a send), sends anything
// (an answer), or `span` has passed (kOpen; with no bytes left it just waits for that). It
// waits on the connection (poll), never blind. `sent`: how many of `bytes` went.
Trickled trickle(int fd, const std::string& bytes, std::chrono::milliseconds span,
                 std::size_t* sent = nullptr) {
  const auto end = std::chrono::steady_clock::now() + span;
  std::size_t next = 0;
  if (sent) *sent = 0;
  while (std::chrono::steady_clock::now() < end) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 40) > 0) {
      char c;
      const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
      if (n > 0) return Trickled::kAnswered;
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) return Trickled::kClosed;
    } else if (next < bytes.size()) {
      if (send(fd, &bytes[next], 1, MSG_NOSIGNAL) != 1) return Trickled::kClosed;
      ++next;
      if (sent) *sent = next;
    }
  }
  return Trickled::kOpen;
}

// The request deadline, here, and what the test waits at most for it (a bound on a failing
// test's time, not a timing assertion).
constexpr auto kRequestDeadline = std::chrono::milliseconds(600);
constexpr auto kGiveUp = std::chrono::seconds(5);
// A head split over two reads has its request deadline re-armed from a clock the server reads
// after each read, while the engine counts from its loop's reading: the close may come as much
// sooner than kRequestDeadline, by this side's clock, as the server's callback ran after that
// reading; a timer tick (50 ms) allows for it.
constexpr auto kTick = std::chrono::milliseconds(50);

// A body trickled a byte at a time, each well within the idle timeout, is closed by the
// request deadline without a response, counted from the read that held the request's first
// byte: whether the head came in one read, or in two, 150 ms apart (the header deadline,
// the earlier, runs first, then what is left of the request's). Before --request-timeout-ms,
// nothing closed either.
TEST_F(HttpServerTest, TrickledBodyClosesAtTheRequestDeadline) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--header-timeout-ms", "300",
                                 "--request-timeout-ms",
                                 std::to_string(kRequestDeadline.count())}));
  const std::string head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
  for (const std::size_t split : {head.size(), std::size_t{26}}) {
    const int fd = client();
    ASSERT_GE(fd, 0);
    const auto begin = std::chrono::steady_clock::now();
    ASSERT_TRUE(send_all(fd, head.substr(0, split)));
    ASSERT_EQ(trickle(fd, "", std::chrono::milliseconds(split < head.size() ? 150 : 0)),
              Trickled::kOpen);
    ASSERT_TRUE(send_all(fd, head.substr(split)));
    EXPECT_EQ(trickle(fd, std::string(1000, 'b'), kGiveUp), Trickled::kClosed) << split;
    EXPECT_GE(std::chrono::steady_clock::now() - begin,
              split < head.size() ? kRequestDeadline - kTick : kRequestDeadline)
        << split;
  }
}

// The same for a chunked body: trickled chunks, or trailers after the last chunk.
TEST_F(HttpServerTest, TrickledChunksOrTrailersCloseAtTheRequestDeadline) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--request-timeout-ms",
                                 std::to_string(kRequestDeadline.count())}));
  const std::string head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (const std::string& trickled :
       {repeat("1\r\nb\r\n", 200), "0\r\nX-Trailer: " + std::string(1000, 'v')}) {
    const int fd = client();
    ASSERT_GE(fd, 0);
    const auto begin = std::chrono::steady_clock::now();
    ASSERT_TRUE(send_all(fd, head + trickled.substr(0, 3)));
    EXPECT_EQ(trickle(fd, trickled.substr(3), kGiveUp), Trickled::kClosed) << trickled[0];
    EXPECT_GE(std::chrono::steady_clock::now() - begin, kRequestDeadline) << trickled[0];
  }
}

// A request whose body completes within its deadline is answered, and its deadline stops: the
// connection is still served after it would have passed. Its head in one read, then in two
// (the server re-arms the deadline when the head ends: the body goes on past the header
// deadline).
TEST_F(HttpServerTest, BodyCompleteInTimeIsAnsweredAndItsDeadlineStops) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--header-timeout-ms", "200",
                                 "--request-timeout-ms",
                                 std::to_string(kRequestDeadline.count())}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  const std::string head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
  for (const std::size_t split : {head.size(), std::size_t{26}}) {
    ASSERT_TRUE(send_all(fd, head.substr(0, split)));
    ASSERT_EQ(trickle(fd, "", std::chrono::milliseconds(100)), Trickled::kOpen);
    ASSERT_TRUE(send_all(fd, head.substr(split) + "ab"));
    ASSERT_EQ(trickle(fd, "cd", std::chrono::milliseconds(250)), Trickled::kOpen) << split;
    ASSERT_TRUE(send_all(fd, "e"));
    EXPECT_EQ(read_response(fd), kNotAllowed) << split;
  }
  ASSERT_EQ(trickle(fd, "", kRequestDeadline + std::chrono::milliseconds(200)),
            Trickled::kOpen);
  ASSERT_TRUE(send_all(fd, kGet));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

// A pipelining client whose every write completes one request's body and starts the next
// one's, each body complete well within the deadline, keeps being served for several
// deadlines: each request has the whole deadline from its first byte.
TEST_F(HttpServerTest, EachPipelinedRequestHasTheWholeRequestDeadline) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--request-timeout-ms", "300"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  const std::string post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na";
  ASSERT_TRUE(send_all(fd, post));
  const auto begin = std::chrono::steady_clock::now();
  int answered = 0;
  while (std::chrono::steady_clock::now() - begin < std::chrono::milliseconds(1200)) {
    ASSERT_EQ(trickle(fd, "", std::chrono::milliseconds(30)), Trickled::kOpen);
    ASSERT_TRUE(send_all(fd, "b" + post));
    ASSERT_EQ(read_response(fd), kNotAllowed) << "after " << answered << " requests";
    ++answered;
  }
  ASSERT_TRUE(send_all(fd, "b"));
  EXPECT_EQ(read_response(fd), kNotAllowed);
  EXPECT_EQ(finish(fd), "");
}

// --request-timeout-ms 0: no request deadline. A body trickled for twice the header deadline
// (which stops with the head, here split over two reads) is still read, then answered.
TEST_F(HttpServerTest, RequestTimeoutZeroTurnsTheRequestDeadlineOff) {
  ASSERT_NO_FATAL_FAILURE(
      start({"--threads", "1", "--header-timeout-ms", "300", "--request-timeout-ms", "0"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\n"));
  ASSERT_EQ(trickle(fd, "", std::chrono::milliseconds(100)), Trickled::kOpen);
  ASSERT_TRUE(send_all(fd, "Content-Length: 1000\r\n\r\n"));
  const std::string body(1000, 'b');
  std::size_t sent = 0;
  ASSERT_EQ(trickle(fd, body, std::chrono::milliseconds(600), &sent), Trickled::kOpen);
  ASSERT_TRUE(send_all(fd, body.substr(sent)));
  EXPECT_EQ(read_response(fd), kNotAllowed);
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerTest, MaxUrlFlagLowersThe414Limit) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--max-url", "100"}));
  // A target of exactly 100 bytes is answered; 101 is too long.
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /?" + std::string(98, 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
  EXPECT_EQ(exchange("GET /?" + std::string(99, 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n"),
            error_response(414, "URI Too Long"));
}

TEST_F(HttpServerTest, MaxHeaderBytesAndMaxHeadersFlagsLowerThe431Limits) {
  ASSERT_NO_FATAL_FAILURE(
      start({"--threads", "1", "--max-header-bytes", "200", "--max-headers", "3"}));
  const std::string too_large = error_response(431, "Request Header Fields Too Large");
  // Field lines count without their line ends: "Host: x" and "X: " with 190 value bytes are
  // exactly 200, and Host with two more fields is 3.
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(190, 'v') + "\r\n\r\n"));
  EXPECT_EQ(read_response(fd), kHello);
  ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n" + repeat("X: 1\r\n", 2) + "\r\n"));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(191, 'v') + "\r\n\r\n"),
            too_large);
  EXPECT_EQ(exchange("GET / HTTP/1.1\r\nHost: x\r\n" + repeat("X: 1\r\n", 3) + "\r\n"), too_large);
}

TEST_F(HttpServerTest, MaxBodyFlagLowersThe413Limit) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--max-body", "1000"}));
  const std::string too_large = error_response(413, "Content Too Large");
  // A body of exactly 1,000 bytes is read (and the POST answered 405), declared or chunked.
  const int fd = client();
  ASSERT_GE(fd, 0);
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, false, "Allow: GET, HEAD\r\n");
  ASSERT_TRUE(
      send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'b')));
  EXPECT_EQ(read_response(fd), not_allowed);
  ASSERT_TRUE(send_all(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" +
                               std::string(1000, 'b') + "\r\n0\r\n\r\n"));
  EXPECT_EQ(read_response(fd), not_allowed);
  EXPECT_EQ(finish(fd), "");
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"), too_large);
  EXPECT_EQ(exchange("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n"), too_large);
}

// A chunk-size line that never ends (an extension, or zeros: llhttp bounds neither) was parsed
// for as long as it came. Now a line past the chunk data plus --max-header-bytes is answered
// with 413: here after 64 KiB of a line, 16 times the default's budget, not all of which the
// server may have read. The client then stops sending, so the server reads it all and closes
// without a reset.
TEST_F(HttpServerTest, EndlessChunkExtensionOrLeadingZerosGet413AfterBoundedBytes) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (const std::string& line :
       {"1;a" + std::string(64 * 1024, 'a'), std::string(64 * 1024, '0'),
        "1;a=" + std::string(64 * 1024, 'v')}) {
    const int fd = client();
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, chunked + line));
    EXPECT_EQ(read_response(fd), error_response(413, "Content Too Large")) << line.substr(0, 4);
    EXPECT_EQ(finish(fd), "") << line.substr(0, 4);
  }
}

TEST_F(HttpServerTest, IdleKeepAliveConnectionClosesAtTheIdleTimeout) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--idle-timeout-ms", "200"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, kGet));
  ASSERT_EQ(read_response(fd), kHello);
  // Then silence: the server closes without another byte, no sooner than the timeout (less a
  // little: the timer restarted when the response was sent, before it was read here).
  const auto begin = std::chrono::steady_clock::now();
  EXPECT_EQ(read_to_eof(fd), "");
  const auto waited = std::chrono::steady_clock::now() - begin;
  EXPECT_GE(waited, std::chrono::milliseconds(150));
  EXPECT_LT(waited, std::chrono::seconds(5));
}

// Checks what one connection received before the server closed it: whole responses, each
// exactly one that the server gives without --root (any status line, Content-Length or body
// else is wrong), none after one that closes, and a close with every status that answers bad
// input. Returns "" if so, else what is wrong; appends each response's status to `statuses`.
std::string check_responses(const std::string& got, std::vector<int>* statuses) {
  struct Known {
    int status;
    const char* reason;
    const char* body;
    const char* extra;
    bool closes;
  };
  static const Known known[] = {
      {200, "OK", "Hello World!", "", false},
      {404, "Not Found", "Not Found", "", false},
      {405, "Method Not Allowed", "Method Not Allowed", "Allow: GET, HEAD\r\n", false},
      {400, "Bad Request", "Bad Request", "", true},
      {413, "Content Too Large", "Content Too Large", "", true},
      {414, "URI Too Long", "URI Too Long", "", true},
      {431, "Request Header Fields Too Large", "Request Header Fields Too Large", "", true},
      {501, "Not Implemented", "Not Implemented", "", true},
  };
  for (std::size_t at = 0, index = 0; at < got.size(); ++index) {
    const std::string where = "response " + std::to_string(index) + ": ";
    const std::size_t end = got.find("\r\n\r\n", at);
    if (end == std::string::npos) return where + "no end of head in " + got.substr(at, 200);
    const std::string head = got.substr(at, end + 4 - at);
    int status = 0;
    char space = 0;
    if (std::sscanf(head.c_str(), "HTTP/1.1 %3d%c", &status, &space) != 2 || space != ' ') {
      return where + "bad status line in " + head;
    }
    const Known* k = std::find_if(std::begin(known), std::end(known),
                                  [status](const Known& x) { return x.status == status; });
    if (k == std::end(known)) return where + "unknown status in " + head;
    const std::size_t length_at = head.find("\r\nContent-Length: ");
    if (length_at == std::string::npos) return where + "no Content-Length in " + head;
    const std::size_t length = std::strtoul(head.c_str() + length_at + 18, nullptr, 10);
    if (got.size() - (end + 4) < length) return where + "body cut short after " + head;
    const bool keep_alive = head.find("\r\nConnection: keep-alive\r\n") != std::string::npos;
    const std::string expected =
        response(std::to_string(status) + " " + k->reason, k->body, keep_alive, false, k->extra);
    const std::string whole = normalise(got.substr(at, end + 4 + length - at));
    if (whole != expected) return where + "got\n" + whole + "\nexpected\n" + expected;
    statuses->push_back(status);
    at = end + 4 + length;
    if (k->closes && keep_alive) return where + "keeps the connection after " + head;
    if (!keep_alive && at != got.size()) return where + "bytes after the closing " + head;
  }
  return "";
}

TEST_F(HttpServerTest, RandomBytesGetWholeResponsesOrNoneAndNeverCrashTheServer) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  unsigned seed = 12345;
  auto next = [&seed] {
    seed = seed * 1103515245u + 12345u;
    return seed >> 16;
  };
  const std::string prefixes[] = {"", "GET / HTTP/1.1\r\n", "POST / HTTP/1.1\r\n",
                                  "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"};
  std::vector<int> statuses;
  for (int i = 0; i < 200; ++i) {
    std::string junk = prefixes[i % 4];
    const std::size_t size = next() % (i < 190 ? 512 : 200000);
    for (std::size_t k = 0; k < size; ++k) junk += static_cast<char>(next());
    const int fd = connect_client(port_);
    ASSERT_GE(fd, 0);
    send_all(fd, junk);  // may fail: the server may close (and reset) first
    shutdown(fd, SHUT_WR);
    std::string got;
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
    const int error = n < 0 ? errno : 0;
    close(fd);
    // A reset is a close too: the server may close with junk unread, or before the rest of it
    // arrives; what it sent before is still read first. A timeout is a server that never closed.
    ASSERT_TRUE(n == 0 || error == ECONNRESET) << "connection " << i << ": " << std::strerror(error)
                                               << " after " << got.size() << " bytes";
    EXPECT_EQ(check_responses(got, &statuses), "") << "connection " << i;
  }
  // The junk is the same every run; that it draws responses at all shows the checks ran.
  EXPECT_FALSE(statuses.empty());
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

TEST(HttpServerFlagsTest, BadTimeoutAndLimitValuesAreRefusedWithStatus2AndTheFlagNamed) {
  const std::vector<std::vector<std::string>> bad = {
      {"--header-timeout-ms", "-1"},
      {"--request-timeout-ms", "soon"},
      {"--request-timeout-ms", "3600001"},
      {"--idle-timeout-ms", "soon"},
      {"--idle-timeout-ms", "-5"},
      {"--defer-accept-s", "3601"},
      {"--defer-accept-s", "-1"},
      {"--max-url", "0"},
      {"--max-url", "12k"},
      {"--max-header-bytes", " 100"},
      {"--max-headers", "1e3"},
      {"--max-body", "99999999999999999999"},
      {"--max-body"},
  };
  for (const std::vector<std::string>& flag : bad) {
    std::vector<std::string> args = {kBinary, "--port", "0"};
    args.insert(args.end(), flag.begin(), flag.end());
    ServerProcess server(args, kDeadline, /*stderr_too=*/true);
    ASSERT_TRUE(server.started());
    std::string output;
    const int status = server.wait_exit(&output);
    EXPECT_TRUE(exited_with(status, 2)) << flag[0] << ": " << describe(status);
    EXPECT_NE(output.find(flag[0]), std::string::npos) << output;
    EXPECT_EQ(output.find("listening"), std::string::npos) << output;
  }
}

// --- Static files (--root) ---------------------------------------------------------------

// The head of one response, raw, up to and including "\r\n\r\n".
std::string read_head(int fd) {
  std::string got;
  char c;
  while (got.find("\r\n\r\n") == std::string::npos && recv(fd, &c, 1, 0) == 1) got += c;
  return got;
}

// A header's value in a head ("" if absent).
std::string header(const std::string& head, const std::string& name) {
  const std::size_t at = head.find("\r\n" + name + ": ");
  if (at == std::string::npos) return "";
  const std::size_t value = at + name.size() + 4;
  return head.substr(value, head.find("\r\n", value) - value);
}

std::string status_line(const std::string& head) { return head.substr(0, head.find("\r\n")); }

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (const unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

class HttpServerRootTest : public HttpServerTest {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    base_ = std::string(tmp ? tmp : "/tmp") + "/http_root_XXXXXX";
    ASSERT_NE(mkdtemp(base_.data()), nullptr);
    root_ = base_ + "/www";
    ASSERT_EQ(mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir((root_ + "/sub").c_str(), 0755), 0);
    unsigned seed = 7;
    data_.resize(300 * 1024 + 17);
    for (char& ch : data_) {
      seed = seed * 1103515245u + 12345u;
      ch = static_cast<char>(seed >> 16);
    }
    write_file(root_ + "/data.bin", data_);
    write_file(root_ + "/style.css", "body{}");
    write_file(root_ + "/a.json", "{}");
    write_file(root_ + "/sub/page.html", "<p>sub</p>");
    write_file(root_ + "/empty.txt", "");
    write_file(base_ + "/secret.txt", "TOP SECRET");
    ASSERT_EQ(symlink(base_.c_str(), (root_ + "/sub/up").c_str()), 0);
    ASSERT_EQ(symlink((base_ + "/secret.txt").c_str(), (root_ + "/link.txt").c_str()), 0);
  }

  void start_root() { start({"--threads", "2", "--root", root_}); }

  // GET or HEAD of `target`: the head, and the body (Content-Length bytes) in *body.
  std::string get(int fd, const std::string& target, std::string* body,
                  const std::string& method = "GET", const std::string& extra = "") {
    if (!send_all(fd, method + " " + target + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n")) {
      return "<send failed>";
    }
    const std::string head = read_head(fd);
    body->clear();
    if (method != "HEAD" && !header(head, "Content-Length").empty()) {
      *body = recv_exact(fd, std::stoull(header(head, "Content-Length")));
    }
    return head;
  }

  std::string base_, root_, data_;
};

TEST_F(HttpServerRootTest, FilesArriveIntactWithTypeLengthAndLastModified) {
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  std::string head = get(fd, "/data.bin", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  EXPECT_EQ(header(head, "Content-Type"), "application/octet-stream");
  EXPECT_EQ(header(head, "Content-Length"), std::to_string(data_.size()));
  ASSERT_EQ(body.size(), data_.size());
  EXPECT_EQ(fnv1a(body), fnv1a(data_));
  // Last-Modified is st_mtime as an IMF-fixdate.
  struct stat st;
  ASSERT_EQ(stat((root_ + "/data.bin").c_str(), &st), 0);
  std::tm tm = {};
  const std::string lm = header(head, "Last-Modified");
  ASSERT_EQ(lm.size(), 29u) << head;
  ASSERT_NE(strptime(lm.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm), nullptr);
  EXPECT_EQ(timegm(&tm), st.st_mtime);
  head = get(fd, "/style.css", &body);
  EXPECT_EQ(header(head, "Content-Type"), "text/css; charset=utf-8");
  EXPECT_EQ(body, "body{}");
  head = get(fd, "/a.json?x=1", &body);
  EXPECT_EQ(header(head, "Content-Type"), "application/json");
  EXPECT_EQ(body, "{}");
  head = get(fd, "/sub/page.html", &body);
  EXPECT_EQ(header(head, "Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(body, "<p>sub</p>");
  head = get(fd, "/empty.txt", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK");
  EXPECT_EQ(header(head, "Content-Length"), "0");
  // "/" without index.html: Hello World, as without --root.
  head = get(fd, "/", &body);
  EXPECT_EQ(body, "Hello World!");
  write_file(root_ + "/index.html", "<h1>index</h1>");
  head = get(fd, "/", &body);
  EXPECT_EQ(header(head, "Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(body, "<h1>index</h1>");
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerRootTest, HeadHasNoBody) {
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "HEAD /data.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /style.css HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string head = read_head(fd);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK");
  EXPECT_EQ(header(head, "Content-Length"), std::to_string(data_.size()));
  // The next bytes are the second response, not a body.
  const std::string next = read_head(fd);
  EXPECT_EQ(status_line(next), "HTTP/1.1 200 OK") << next;
  EXPECT_EQ(header(next, "Content-Type"), "text/css; charset=utf-8");
  EXPECT_EQ(recv_exact(fd, 6), "body{}");
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerRootTest, IfModifiedSinceGives304) {
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  const std::string lm = header(get(fd, "/style.css", &body), "Last-Modified");
  ASSERT_FALSE(lm.empty());
  std::string head = get(fd, "/style.css", &body, "GET", "If-Modified-Since: " + lm + "\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 304 Not Modified") << head;
  EXPECT_EQ(header(head, "Last-Modified"), lm);
  EXPECT_EQ(body, "");
  // Case-insensitive name; an earlier, a malformed or a future one (RFC 9110 13.1.3: later
  // than the server's clock, it tells nothing) is 200.
  head = get(fd, "/style.css", &body, "GET", "if-modified-since: " + lm + "\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 304 Not Modified") << head;
  head =
      get(fd, "/style.css", &body, "GET", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  head =
      get(fd, "/style.css", &body, "GET", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  EXPECT_EQ(body, "body{}");
  head = get(fd, "/style.css", &body, "GET", "If-Modified-Since: yesterday\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  // The header does not carry over to the next request on the connection.
  head = get(fd, "/style.css", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  EXPECT_EQ(body, "body{}");
  EXPECT_EQ(finish(fd), "");
}

// RFC 9110 8.8.2.1: a Last-Modified later than the response's Date must be replaced by the
// Date. A file touched into the future was sent with its mtime, and any If-Modified-Since at or
// past it got 304: a cache that stored that date kept its copy, even after the file changed.
TEST_F(HttpServerRootTest, FutureMtimeIsSentAsTheDateAndNeverMakesA304) {
  const std::string path = root_ + "/future.txt";
  write_file(path, "later");
  const timeval in_a_day[2] = {{std::time(nullptr) + 86400, 0}, {std::time(nullptr) + 86400, 0}};
  ASSERT_EQ(utimes(path.c_str(), in_a_day), 0);
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  std::string head = get(fd, "/future.txt", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  ASSERT_FALSE(header(head, "Date").empty()) << head;
  EXPECT_EQ(header(head, "Last-Modified"), header(head, "Date")) << head;
  EXPECT_EQ(body, "later");
  // The date sent, and the mtime itself (what the server used to send): neither is a 304
  // while the mtime lies ahead, since the file may still change before it.
  std::tm tm = {};
  const std::time_t mtime = in_a_day[0].tv_sec;
  gmtime_r(&mtime, &tm);
  char future[64];
  ASSERT_GT(std::strftime(future, sizeof future, "%a, %d %b %Y %H:%M:%S GMT", &tm), 0u);
  for (const std::string& since : {header(head, "Date"), std::string(future)}) {
    head = get(fd, "/future.txt", &body, "GET", "If-Modified-Since: " + since + "\r\n");
    EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << since << "\n" << head;
    EXPECT_EQ(body, "later") << since;
  }
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerRootTest, MissingFilesDirectoriesAndEscapesAreRefused) {
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  for (const std::string target : {"/missing.txt", "/sub", "/sub/", "/link.txt"}) {
    const std::string head = get(fd, target, &body);
    EXPECT_EQ(status_line(head), "HTTP/1.1 404 Not Found") << target;
  }
  for (const std::string target :
       {"/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/sub/../../secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt", "/.%2e/secret.txt", "/sub/up/secret.txt",
        "//../secret.txt", "/..", "/%2e%2e"}) {
    const std::string head = get(fd, target, &body);
    const std::string status = status_line(head);
    EXPECT_TRUE(status == "HTTP/1.1 404 Not Found" || status == "HTTP/1.1 400 Bad Request")
        << target << ": " << head;
    EXPECT_EQ(body.find("SECRET"), std::string::npos) << target;
    if (status != "HTTP/1.1 404 Not Found") break;  // a 400 closes the connection
  }
  // Bad escapes and NULs: 400 and a close.
  EXPECT_EQ(normalise(exchange("GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n")), error_response(400, "Bad Request"));
  EXPECT_EQ(normalise(exchange("GET /a%00.txt HTTP/1.1\r\nHost: x\r\n\r\n")),
            error_response(400, "Bad Request"));
}

// Absolute-form under --root (RFC 9112 3.2.2): the file at its path, index.html for an empty
// one, and the same refusals as the path in origin-form. It was 400 and a close.
TEST_F(HttpServerRootTest, AbsoluteFormTargetServesTheFileAtItsPath) {
  write_file(root_ + "/index.html", "<h1>index</h1>");
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  std::string head = get(fd, "http://x/style.css", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  EXPECT_EQ(body, "body{}");
  head = get(fd, "http://127.0.0.1:3000/sub/page.html?x=1", &body);
  EXPECT_EQ(header(head, "Content-Type"), "text/html; charset=utf-8") << head;
  EXPECT_EQ(body, "<p>sub</p>");
  head = get(fd, "https://x", &body);
  EXPECT_EQ(body, "<h1>index</h1>") << head;
  for (const std::string target : {"http://x/../secret.txt", "http://x/sub/up/secret.txt"}) {
    head = get(fd, target, &body);
    EXPECT_EQ(status_line(head), "HTTP/1.1 404 Not Found") << target;
  }
  EXPECT_EQ(finish(fd), "");
  // OPTIONS * is the server's, not a file's; "*" or another scheme is no path under the root.
  EXPECT_EQ(exchange("OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            response("200 OK", "", false, false, "Allow: GET, HEAD\r\n"));
  EXPECT_EQ(exchange("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), error_response(400, "Bad Request"));
  EXPECT_EQ(exchange("GET ftp://x/style.css HTTP/1.1\r\nHost: x\r\n\r\n"),
            error_response(400, "Bad Request"));
}

// docs/http.md's rule for symlinks: one as the last component is never served, wherever it
// points (O_NOFOLLOW), inside the root too; a symlinked directory is followed while the path
// stays under the root.
TEST_F(HttpServerRootTest, SymlinkAsTheLastComponentIs404EvenInsideTheRoot) {
  ASSERT_EQ(symlink("style.css", (root_ + "/alias.css").c_str()), 0);
  ASSERT_EQ(symlink("sub", (root_ + "/subalias").c_str()), 0);
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  std::string head = get(fd, "/alias.css", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 404 Not Found") << head;
  head = get(fd, "/subalias/page.html", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  EXPECT_EQ(body, "<p>sub</p>");
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerRootTest, PipelinedFileThenHelloAnsweredInOrder) {
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(
      send_all(fd, "GET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n" + kGet + "GET /a.json HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string head = read_head(fd);
  ASSERT_EQ(status_line(head), "HTTP/1.1 200 OK");
  const std::string body = recv_exact(fd, data_.size());
  EXPECT_EQ(fnv1a(body), fnv1a(data_));
  EXPECT_EQ(read_response(fd), kHello);
  head = read_head(fd);
  EXPECT_EQ(header(head, "Content-Type"), "application/json");
  EXPECT_EQ(recv_exact(fd, 2), "{}");
  // Still open for more.
  ASSERT_TRUE(send_all(fd, kGet));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

// A FIFO under the root is 404 at once: opening it for reading would block until a writer
// came, freezing every connection of the shard (one shard here, so the request behind it on
// the same connection shows that the shard kept going). Issue 10.
TEST_F(HttpServerRootTest, FifoUnderTheRootIs404AtOnceAndTheShardGoesOn) {
  ASSERT_EQ(mkfifo((root_ + "/pipe").c_str(), 0644), 0);
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--root", root_}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  std::string body;
  const std::string head = get(fd, "/pipe", &body);
  EXPECT_EQ(status_line(head), "HTTP/1.1 404 Not Found") << head;
  ASSERT_TRUE(send_all(fd, kGet));
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HttpServerRootTest, SparseFileOver2GiBIsServedCompletely) {
  const std::string path = root_ + "/big.bin";
  const off_t size = (off_t{2} << 30) + 4096;
  const int file = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(file, 0);
  ASSERT_EQ(ftruncate(file, size), 0);
  // Markers: at the start, just past 2 GiB, and in the last bytes.
  const std::pair<off_t, std::string> markers[] = {
      {0, "BEGIN"}, {(off_t{2} << 30) + 100, "PAST2G"}, {size - 4, "END!"}};
  for (const auto& [at, text] : markers) {
    ASSERT_EQ(pwrite(file, text.data(), text.size(), at), static_cast<ssize_t>(text.size()));
  }
  close(file);
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" + kGet));
  const std::string head = read_head(fd);
  ASSERT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
  ASSERT_EQ(header(head, "Content-Length"), std::to_string(size));
  std::vector<char> buf(1 << 20);
  off_t have = 0;
  std::string found[3];
  while (have < size) {
    const ssize_t n = recv(fd, buf.data(), std::min<off_t>(size - have, buf.size()), 0);
    if (n <= 0) break;
    for (int m = 0; m < 3; ++m) {
      const off_t at = markers[m].first;
      const off_t end = at + static_cast<off_t>(markers[m].second.size());
      for (off_t i = std::max(at, have); i < std::min(end, have + n); ++i) {
        found[m] += buf[static_cast<std::size_t>(i - have)];
      }
    }
    have += n;
  }
  EXPECT_EQ(have, size);
  for (int m = 0; m < 3; ++m) EXPECT_EQ(found[m], markers[m].second) << "marker " << m;
  // The pipelined request behind it is answered after it.
  EXPECT_EQ(read_response(fd), kHello);
  EXPECT_EQ(finish(fd), "");
}

TEST(HttpServerFlagsTest, MissingRootIsRefusedWithStatus2) {
  ServerProcess server({kBinary, "--root", "/nonexistent/dir/for/http_server_test"}, kDeadline);
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

// A request that closes (here Connection: close; HTTP/1.0 without keep-alive alike) whose head
// came in two reads: on_data changes the header deadline only when the read did not finish
// the connection (`!read.finish`), so the deadline set by the head's first read is never
// cleared, and it closes the connection while the response is still being sent: a large file
// is cut header-timeout after the request began. The same request kept alive is sent whole.
TEST_F(HttpServerRootTest, ClosingRequestsResponseIsNotCutByItsHeaderDeadline) {
  const std::string path = root_ + "/big.bin";
  constexpr off_t kSize = off_t{64} << 20;  // far more than the kernel buffers hold
  const int file = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(file, 0);
  ASSERT_EQ(ftruncate(file, kSize), 0);
  close(file);
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1", "--root", root_, "--header-timeout-ms", "300"}));
  for (const bool closing : {false, true}) {
    const int fd = client();
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, std::string("GET /big.bin HTTP/1.1\r\nHost: x\r\n") +
                                 (closing ? "Connection: close\r\n" : "")));
    usleep(100 * 1000);  // so that the head ends in a second read
    ASSERT_TRUE(send_all(fd, "\r\n"));
    usleep(600 * 1000);  // the client reads nothing for two header deadlines
    const std::string head = read_head(fd);
    ASSERT_EQ(status_line(head), "HTTP/1.1 200 OK") << head;
    std::vector<char> buf(1 << 20);
    off_t have = 0;
    ssize_t n;
    while (have < kSize &&
           (n = recv(fd, buf.data(), std::min<off_t>(kSize - have, buf.size()), 0)) > 0) {
      have += n;
    }
    EXPECT_EQ(have, kSize) << (closing ? "Connection: close" : "keep-alive");
  }
}

// --- Signals (tools/server_main.cc) ------------------------------------------------------

// Whether process `pid` has a handler for `sig` (its SigCgt mask in /proc).
bool catches(pid_t pid, int sig) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigCgt:", 0) == 0) {
      return (std::stoull(line.substr(7), nullptr, 16) >> (sig - 1)) & 1;
    }
  }
  return false;
}

// The first SIGTERM or SIGINT stops the server; one more, of either kind, ends the process at
// once while the stop drains. SA_RESETHAND reset only the signal that came: SIGTERM, then
// Ctrl-C, waited out the drain (5 s, or the client's read of what it is owed).
TEST_F(HttpServerRootTest, AfterTheSignalThatStopsItEitherSignalEndsTheProcessAtOnce) {
  {
    // A response larger than every buffer between the server and a client that reads none of
    // it keeps the stop draining (sparse: it takes no disk).
    const int big = open((root_ + "/big.bin").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(big, 0);
    ASSERT_EQ(ftruncate(big, off_t{256} << 20), 0);
    close(big);
  }
  ASSERT_NO_FATAL_FAILURE(start_root());
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(status_line(read_head(fd)), "HTTP/1.1 200 OK");
  const pid_t pid = server_->pid();
  ASSERT_TRUE(catches(pid, SIGTERM) && catches(pid, SIGINT));
  ASSERT_TRUE(server_->signal(SIGTERM));
  // The handler has run once the SIGTERM's disposition is back to its default.
  const auto give_up = std::chrono::steady_clock::now() + kDeadline;
  while (catches(pid, SIGTERM) && std::chrono::steady_clock::now() < give_up) {}
  ASSERT_FALSE(catches(pid, SIGTERM));
  EXPECT_FALSE(catches(pid, SIGINT)) << "a Ctrl-C now would only ask for the stop again";
  ASSERT_TRUE(server_->signal(SIGINT));
  const int status = server_->wait_exit();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << describe(status);
  server_.reset();  // gone: TearDown has no stop to check
}
