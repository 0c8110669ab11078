// tools/http/responder.cc without sockets: reads are fed to a Responder the way
// tools/http_server's on_data feeds them (a Conn of the connection's own only while keep_state
// says so), and what comes out is compared byte for byte. The Date line is fixed for a test:
// a Responder changes it only in refresh_date(), which these tests call only through the
// constructor.
#include "tools/http/responder.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tests/tools/http/one_file_root.h"
#include "tools/http/static_files.h"

namespace {

namespace http = tools::http;

const std::string kGet = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

// One connection as the server drives it.
class Connection {
 public:
  explicit Connection(http::Responder& responder) : responder_(responder) {}

  // One read; returns the ReadResult of its last parse, with the Outputs' bytes appended to
  // sent(). After a pause the rest is parsed at once, as the server parses it once its queue
  // is empty (an Output here counts as sent when appended).
  http::ReadResult read(std::string_view bytes) {
    EXPECT_FALSE(own_ && own_->finished()) << "a finishing connection is not parsed";
    for (;;) {
      http::Output out;
      const http::ReadResult result = responder_.parse(own_.get(), bytes, &out);
      ++parses_;
      EXPECT_TRUE(out.files.empty());  // no StaticFiles
      sent_ += out.bytes;
      if (result.keep_state && !own_) {
        own_ = std::make_unique<http::Conn>(responder_.scratch());
      } else if (!result.keep_state && own_) {
        own_.reset();
      }
      if (!responder_.paused() || responder_.unparsed() == 0) return result;
      bytes.remove_prefix(bytes.size() - responder_.unparsed());
    }
  }

  const std::string& sent() const { return sent_; }
  const http::Conn* own() const { return own_.get(); }
  int parses() const { return parses_; }

 private:
  http::Responder& responder_;
  std::unique_ptr<http::Conn> own_;
  std::string sent_;
  int parses_ = 0;
};

// Replaces each Date value (29 bytes) with "<date>".
std::string normalise(std::string s) {
  for (std::size_t at = 0; (at = s.find("\r\nDate: ", at)) != std::string::npos;) {
    s.replace(at + 8, 29, "<date>");
    at += 8;
  }
  return s;
}

std::string response(const std::string& status, const std::string& body, bool keep_alive,
                     const std::string& extra = "") {
  return "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nContent-Type: text/plain\r\nDate: <date>\r\n" + extra +
         (keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n") + body;
}
const std::string kHello = response("200 OK", "Hello World!", true);

std::string error_response(int status, const std::string& reason) {
  return response(std::to_string(status) + " " + reason, reason, false);
}

TEST(ResponderTest, PipelineSplitAtEveryOffsetGivesTheSameOutput) {
  http::Responder responder(http::Limits{}, nullptr);
  // Requests that keep state across reads in each way: a head, a declared body, a chunked
  // body, a query; the last one closes, and what follows it is never answered.
  const std::string input =
      kGet + "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
      "PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
      "GET /?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + kGet;
  const std::string expected =
      kHello + response("404 Not Found", "Not Found", true) +
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n") +
      response("200 OK", "Hello World!", false);
  Connection whole(responder);
  EXPECT_TRUE(whole.read(input).finish);
  ASSERT_EQ(normalise(whole.sent()), expected);
  // Two reads, split at every offset.
  for (std::size_t split = 1; split < input.size(); ++split) {
    Connection c(responder);
    const http::ReadResult first = c.read(std::string_view(input).substr(0, split));
    if (!first.finish) c.read(std::string_view(input).substr(split));
    ASSERT_EQ(c.sent(), whole.sent()) << "split at byte " << split;
    ASSERT_TRUE(c.own() && c.own()->finished()) << "split at byte " << split;
  }
  // One byte per read.
  Connection bytes(responder);
  bool finished = false;
  for (std::size_t i = 0; i < input.size() && !finished; ++i) {
    finished = bytes.read(std::string_view(input).substr(i, 1)).finish;
  }
  EXPECT_EQ(bytes.sent(), whole.sent());
}

TEST(ResponderTest, StateIsKeptOnlyWhileARequestIsUnfinished) {
  http::Responder responder(http::Limits{}, nullptr);
  Connection c(responder);
  http::ReadResult r = c.read("GET / HTTP/1.1\r\nHo");
  EXPECT_TRUE(r.in_head);
  EXPECT_TRUE(r.keep_state);
  EXPECT_FALSE(r.finish);
  ASSERT_NE(c.own(), nullptr);
  EXPECT_TRUE(c.own()->in_head());
  r = c.read("st: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab");
  EXPECT_FALSE(r.in_head);  // in the body: the header deadline no longer applies
  EXPECT_TRUE(r.keep_state);
  ASSERT_NE(c.own(), nullptr);
  EXPECT_FALSE(c.own()->in_head());
  r = c.read("cd");
  EXPECT_FALSE(r.in_head);
  EXPECT_FALSE(r.keep_state);  // between requests: the Conn may go
  EXPECT_EQ(c.own(), nullptr);
  EXPECT_EQ(normalise(c.sent()), kHello + response("405 Method Not Allowed", "Method Not Allowed",
                                                   true, "Allow: GET, HEAD\r\n"));
}

TEST(ResponderTest, ClosingRequestFinishesAndNothingAfterItIsAnswered) {
  http::Responder responder(http::Limits{}, nullptr);
  Connection c(responder);
  const http::ReadResult r = c.read("GET / HTTP/1.0\r\n\r\n" + kGet);
  EXPECT_TRUE(r.finish);
  EXPECT_FALSE(r.in_head);
  EXPECT_TRUE(r.keep_state);  // so that later reads see finished()
  ASSERT_NE(c.own(), nullptr);
  EXPECT_TRUE(c.own()->finished());
  EXPECT_EQ(normalise(c.sent()), response("200 OK", "Hello World!", false));
}

TEST(ResponderTest, BadInputIsAnsweredAfterTheRequestsBeforeIt) {
  http::Responder responder(http::Limits{}, nullptr);
  Connection c(responder);
  EXPECT_TRUE(c.read(kGet + kGet + "NOT HTTP\r\n\r\n" + kGet).finish);
  EXPECT_EQ(normalise(c.sent()), kHello + kHello + error_response(400, "Bad Request"));
}

// Each limit lets a request exactly at it through and refuses one byte (or field) more with
// its status, on a fresh connection each.
TEST(ResponderTest, LimitsAreInclusiveAndGiveTheirStatus) {
  http::Limits limits;
  limits.max_url = 10;
  // Field lines count without their line ends: room for "Host: x" (7) and
  // "Transfer-Encoding: chunked" (26).
  limits.max_header_bytes = 45;
  limits.max_headers = 3;
  limits.max_body = 8;
  http::Responder responder(limits, nullptr);
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  const std::string too_large = error_response(413, "Content Too Large");
  const std::string headers_too_large = error_response(431, "Request Header Fields Too Large");
  const struct {
    std::string request;
    std::string answer;
  } cases[] = {
      {"GET /?" + std::string(8, 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n", kHello},
      {"GET /?" + std::string(9, 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n", error_response(414, "URI Too Long")},
      {"GET / HTTP/1.1\r\nHost: x\r\nAb: " + std::string(34, 'v') + "\r\n\r\n", kHello},
      {"GET / HTTP/1.1\r\nHost: x\r\nAb: " + std::string(35, 'v') + "\r\n\r\n", headers_too_large},
      {"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", kHello},
      {"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", headers_too_large},
      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n12345678", not_allowed},
      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n", too_large},
      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n3\r\n678\r\n0\r\n\r\n",
       not_allowed},
      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n", too_large},
  };
  for (const auto& [request, answer] : cases) {
    Connection c(responder);
    const http::ReadResult r = c.read(request);
    EXPECT_EQ(normalise(c.sent()), answer) << request;
    EXPECT_EQ(r.finish, answer.find("Connection: close") != std::string::npos) << request;
  }
}

// What a fresh connection is sent for `input` read at once, normalised; the same bytes must
// come out when the input is split into two reads at any offset (a check that looks at bytes
// must not depend on where reads end).
std::string answer(http::Responder& responder, const std::string& input) {
  Connection whole(responder);
  whole.read(input);
  for (std::size_t split = 1; split < input.size(); ++split) {
    Connection c(responder);
    if (!c.read(std::string_view(input).substr(0, split)).finish) {
      c.read(std::string_view(input).substr(split));
    }
    EXPECT_EQ(c.sent(), whole.sent()) << "split at byte " << split << " of " << input;
  }
  return normalise(whole.sent());
}

// Framing llhttp's lenient mode lets through (issue 10; strict mode refuses it): each is
// refused, and kGet behind it is not answered, since bytes behind a framing error cannot be
// trusted to start a request.
TEST(ResponderTest, ChunkDataNotEndedByCrlfGets400AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, chunked + "5\r\nhelloXX0\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, chunked + "5\r\nhello\rX0\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, chunked + "5\r\nhelloX\n0\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, chunked + "2\r\nhi\r\n5\r\nhello\n\r0\r\n\r\n" + kGet), bad);
  // Well framed, the same bodies are read through and the request behind is answered.
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  EXPECT_EQ(answer(responder, chunked + "2\r\nhi\r\n5\r\nhello\r\n0\r\n\r\n" + kGet),
            not_allowed + kHello);
}

// A CR not followed by LF, which llhttp's lenient mode takes, with the byte after it, for a
// line end (the head's end, an empty value's, a chunk-size line's, the trailers' end): 400
// wherever reads end (a CR that ends a read waits for the byte after it).
TEST(ResponderTest, CrNotFollowedByLfGets400AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\n\rXGET /b HTTP/1.0\r\n\r\n" + kGet),
            bad);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nX:\r_Transfer-Encoding: chunked\r\n"
                              "\r\n0\r\n\r\n" + kGet),
            bad);
  EXPECT_EQ(answer(responder, chunked + "5\rXhello\r\n0\rY\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, chunked + "0\r\n\rZ" + kGet), bad);
  // The same lines ended by CRLF are read, and the request behind answered.
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nX:\r\n\r\n" + kGet),
            not_allowed + kHello);
  EXPECT_EQ(answer(responder, chunked + "5\r\nhello\r\n0\r\n\r\n" + kGet), not_allowed + kHello);
}

// RFC 9112 3.2: a request target is a URI: ASCII without whitespace or control bytes. llhttp's
// lenient mode lets a tab, a form feed and bytes over 0x7f through; percent-encoded, they
// are a target like any other.
TEST(ResponderTest, ControlByteOrRawUtf8InTheTargetGets400AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, "GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET /a\fb HTTP/1.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET /?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET /caf%C3%A9?q=%09 HTTP/1.1\r\nHost: x\r\n\r\n" + kGet),
            response("404 Not Found", "Not Found", true) + kHello);
}

// llhttp bounds neither a chunk extension nor the leading zeros of a chunk size, so a chunk-size
// line that never ends was parsed for ever, whatever max_body (as Node's CVE-2024-22019). A
// request's chunk-size lines (size, extensions, line end) may add up to three bytes per byte of
// chunk data so far (a one-byte chunk's "1\r\n") plus max_header_bytes: exactly that is read,
// one byte more is 413, wherever reads end.
TEST(ResponderTest, ChunkSizeLinesPastThreeBytesPerDataBytePlusMaxHeaderBytesGet413AndClose) {
  http::Limits limits;
  limits.max_header_bytes = 64;
  http::Responder responder(limits, nullptr);
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  const std::string too_large = error_response(413, "Content Too Large");
  // "3;" + 60 bytes + CRLF is 64, the whole budget before any data; with "0\r\n" after the 3
  // bytes of data, the lines are 67 of 3 * 3 + 64.
  const std::string ext = "3;" + std::string(60, 'e');
  EXPECT_EQ(answer(responder, chunked + ext + "\r\nabc\r\n0\r\n\r\n" + kGet),
            not_allowed + kHello);
  EXPECT_EQ(answer(responder, chunked + ext + "e\r\nabc\r\n0\r\n\r\n" + kGet), too_large);
  EXPECT_EQ(answer(responder, chunked + "3;n=" + std::string(59, 'v') + "\r\nabc\r\n0\r\n\r\n" +
                                  kGet),
            too_large);
  // Leading zeros, in a chunk's size and in the last chunk's (after "3\r\n" and 3 bytes of
  // data, a last line of 73 - 3).
  const std::string zeros(61, '0');
  EXPECT_EQ(answer(responder, chunked + zeros + "3\r\nabc\r\n0\r\n\r\n" + kGet),
            not_allowed + kHello);
  EXPECT_EQ(answer(responder, chunked + zeros + "03\r\nabc\r\n0\r\n\r\n" + kGet), too_large);
  EXPECT_EQ(answer(responder, chunked + "3\r\nabc\r\n" + std::string(67, '0') + "0\r\n\r\n" +
                                  kGet),
            not_allowed + kHello);
  EXPECT_EQ(answer(responder, chunked + "3\r\nabc\r\n" + std::string(68, '0') + "0\r\n\r\n" +
                                  kGet),
            too_large);
  // The budget grows with the data: after "64\r\n" and 100 bytes, a line of 3 * 100 + 64 - 4.
  EXPECT_EQ(answer(responder, chunked + "64\r\n" + std::string(100, 'd') + "\r\n" +
                                  std::string(358, '0') + "\r\n\r\n" + kGet),
            not_allowed + kHello);
  EXPECT_EQ(answer(responder, chunked + "64\r\n" + std::string(100, 'd') + "\r\n" +
                                  std::string(359, '0') + "\r\n\r\n" + kGet),
            too_large);
  // Chunks of one byte each, their sizes in plain hex, never pass it, however many.
  std::string tiny = chunked;
  for (int i = 0; i < 300; ++i) tiny += "1\r\nt\r\n";
  EXPECT_EQ(answer(responder, tiny + "0\r\n\r\n" + kGet), not_allowed + kHello);
}

// A chunk extension or leading zeros that never end: answered and closed once the line passes
// its budget (max_header_bytes, 16 KiB by default), fed here a KiB a read as a client streams it.
TEST(ResponderTest, EndlessChunkSizeLineIsAnsweredAfterABoundedNumberOfBytes) {
  http::Responder responder(http::Limits{}, nullptr);
  for (const std::string start : {"1;a", "0", "1;a=b"}) {
    Connection c(responder);
    const char fill = start.back();
    http::ReadResult r = c.read("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                start);
    std::size_t fed = start.size();
    while (!r.finish && fed < 1024 * 1024) {
      r = c.read(std::string(1024, fill));
      fed += 1024;
    }
    EXPECT_TRUE(r.finish) << start;
    EXPECT_LE(fed, http::Limits{}.max_header_bytes + 1024) << start;
    EXPECT_EQ(normalise(c.sent()), error_response(413, "Content Too Large")) << start;
  }
}

// llhttp discards the whitespace before a field value (and an empty value's line end and
// obs-folds) without passing it to any callback, so it counted toward no limit: "X:" followed
// by spaces for ever was read until the header deadline. max_header_bytes counts it now, with
// the colon: a field line's bytes without its line end (an empty value's counts too).
TEST(ResponderTest, WhitespaceBeforeAValueCountsTowardMaxHeaderBytes) {
  http::Limits limits;
  limits.max_header_bytes = 32;
  http::Responder responder(limits, nullptr);
  const std::string too_large = error_response(431, "Request Header Fields Too Large");
  const std::string get = "GET / HTTP/1.1\r\n";
  // "Host:", 26 spaces or tabs and "x" are 32 bytes.
  EXPECT_EQ(answer(responder, get + "Host:" + std::string(26, ' ') + "x\r\n\r\n" + kGet),
            kHello + kHello);
  EXPECT_EQ(answer(responder, get + "Host:" + std::string(27, ' ') + "x\r\n\r\n" + kGet),
            too_large);
  EXPECT_EQ(answer(responder, get + "Host:" + std::string(27, '\t') + "x\r\n\r\n" + kGet),
            too_large);
  // "Host: x" is 7; "X:", 21 spaces and the line end of the empty value, 25.
  EXPECT_EQ(answer(responder, get + "Host: x\r\nX:" + std::string(21, ' ') + "\r\n\r\n" + kGet),
            kHello + kHello);
  EXPECT_EQ(answer(responder, get + "Host: x\r\nX:" + std::string(22, ' ') + "\r\n\r\n" + kGet),
            too_large);
}

// Whitespace before a value, or obs-folds of an empty one, that never end, in a head or in a
// trailer: answered and closed once past max_header_bytes, fed a KiB a read.
TEST(ResponderTest, EndlessWhitespaceBeforeAValueIsAnsweredAfterABoundedNumberOfBytes) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX:";
  const std::string trailer =
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT:";
  const struct {
    std::string start, fill;
  } cases[] = {{head, " "}, {head, "\t"}, {head, "\r\n "}, {trailer, " "}};
  for (const auto& [start, fill] : cases) {
    Connection c(responder);
    std::string read;
    while (read.size() + fill.size() <= 1024) read += fill;
    http::ReadResult r = c.read(start);
    std::size_t fed = 0;
    while (!r.finish && fed < 1024 * 1024) {
      r = c.read(read);
      fed += read.size();
    }
    EXPECT_TRUE(r.finish) << start << "|" << fill;
    EXPECT_LE(fed, http::Limits{}.max_header_bytes + read.size()) << start << "|" << fill;
    EXPECT_EQ(normalise(c.sent()), error_response(431, "Request Header Fields Too Large"))
        << start << "|" << fill;
  }
}

TEST(ResponderTest, TransferCodingsOtherThanChunkedAloneGet501AndFoldedOnes400) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string post = "POST / HTTP/1.1\r\nHost: x\r\n";
  const std::string body = "\r\n0\r\n\r\n" + kGet;
  const std::string not_implemented = error_response(501, "Not Implemented");
  for (const std::string& coding : std::initializer_list<std::string>{"identity, chunked", "gzip, chunked", "chunked, chunked",
                                   "gzip", "chunked;q=1", "x" + std::string(40, ' ') + "chunked"}) {
    EXPECT_EQ(answer(responder, post + "Transfer-Encoding: " + coding + "\r\n" + body),
              not_implemented)
        << coding;
  }
  EXPECT_EQ(answer(responder, post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n" +
                                  body),
            not_implemented);
  // "chunked" in any case, with spaces around, is chunked.
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  EXPECT_EQ(answer(responder, post + "Transfer-Encoding:  ChunKed \r\n" + body),
            not_allowed + kHello);
  // An obs-fold in the value, before it or inside it.
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, post + "Transfer-Encoding:\r\n chunked\r\n" + body), bad);
  EXPECT_EQ(answer(responder, post + "Transfer-Encoding:\r\n\t \tchunked\r\n" + body), bad);
  EXPECT_EQ(answer(responder, post + "Transfer-Encoding: chunked\r\n , gzip\r\n" + body), bad);
  // The other framing header likewise (llhttp would read the length as 5).
  EXPECT_EQ(answer(responder, post + "Content-Length:\r\n 5\r\n\r\nhello" + kGet), bad);
}

TEST(ResponderTest, MissingOrRepeatedHostOrSpaceBeforeTheColonGets400AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nX-Host: x\r\nHosts: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.0\r\nHost: x\r\nHOST: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost : x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 0\r\n\r\n" + kGet),
            bad);
  // HTTP/1.0 may leave Host out; any case of the name counts once.
  EXPECT_EQ(answer(responder, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + kGet),
            kHello + kHello);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nhOsT: x\r\n\r\n" + kGet), kHello + kHello);
}

// RFC 9112 3.2.2: a target in absolute-form is read as its path and query, so it reaches a
// page (and its query) as the origin-form does; the host in it is not looked at.
bool echo_query(std::string_view query, std::string* body) {
  body->append("query=").append(query);
  return true;
}
constexpr http::Page kEchoPage[] = {{"/echo", "text/plain", echo_query}};

TEST(ResponderTest, AbsoluteFormTargetReachesAPageWithItsQuery) {
  http::Responder responder(http::Limits{}, nullptr, kEchoPage);
  const auto echo = [](const std::string& query) {
    return response("200 OK", "query=" + query, true);
  };
  EXPECT_EQ(answer(responder, "GET /echo?a=1#f HTTP/1.1\r\nHost: x\r\n\r\n"), echo("a=1"));
  EXPECT_EQ(answer(responder, "GET http://h:80/echo?a=1#f HTTP/1.1\r\nHost: x\r\n\r\n"),
            echo("a=1"));
  EXPECT_EQ(answer(responder, "GET Http://h/echo HTTP/1.1\r\nHost: x\r\n\r\n"), echo(""));
  EXPECT_EQ(answer(responder, "GET https://h?q HTTP/1.1\r\nHost: x\r\n\r\n" + kGet),
            kHello + kHello);
  EXPECT_EQ(answer(responder, "GET http://h/echo/x HTTP/1.1\r\nHost: x\r\n\r\n"),
            response("404 Not Found", "Not Found", true));
}

TEST(ResponderTest, HttpVersionOtherThan1Gets505AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string unsupported = error_response(505, "HTTP Version Not Supported");
  EXPECT_EQ(answer(responder, "GET / HTTP/2.0\r\nHost: x\r\n\r\n" + kGet), unsupported);
  EXPECT_EQ(answer(responder, "GET / HTTP/0.9\r\nHost: x\r\n\r\n" + kGet), unsupported);
  EXPECT_EQ(answer(responder, "GET / HTTP/3.0\r\nHost: x\r\n\r\n" + kGet), unsupported);
  EXPECT_EQ(answer(responder, "GET / HTTP/9.9\r\nHost: x\r\n\r\n" + kGet), unsupported);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.2\r\nHost: x\r\n\r\n" + kGet), unsupported);
  // Not two digits: a malformed request line (RFC 9112 3), not a version.
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, "GET / HTTP/01.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/x.1\r\nHost: x\r\n\r\n" + kGet), bad);
}

// Checks llhttp 8.1 makes itself (docs/http.md lists them): the request behind is not served.
TEST(ResponderTest, MalformedLinesAndLengthsLlhttpRefusesGet400AndClose) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 99999999999999999999\r\n\r\n" + kGet),
            bad);
}

TEST(ResponderTest, ExpectContinueGets100BeforeTheBodyIsReadAndOthersGet417) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  const std::string not_allowed =
      response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
  // The 100 goes out with the head alone: the client waits for it before sending the body.
  Connection c(responder);
  const http::ReadResult head = c.read(
      "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n");
  EXPECT_FALSE(head.finish);
  EXPECT_EQ(c.sent(), kContinue);
  c.read("hello" + kGet);
  EXPECT_EQ(normalise(c.sent()), kContinue + not_allowed + kHello);
  // Chunked too; pipelined behind another request, after that one's response.
  EXPECT_EQ(answer(responder, kGet +
                                  "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                  "Expect: 100-continue\r\n\r\n1\r\na\r\n0\r\n\r\n"),
            kHello + kContinue + not_allowed);
  // No body to read: no 100. HTTP/1.0: the expectation is ignored (RFC 9110 10.1.1).
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"),
            kHello);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n"
                              "Connection: keep-alive\r\n\r\nx"),
            not_allowed);
  // A body over the limit gets its 413 at once, without a 100.
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              "Content-Length: 2000000\r\n\r\n"),
            error_response(413, "Content Too Large"));
  // Any other expectation: 417, and the body (if one follows) is not read as a request.
  const std::string failed = error_response(417, "Expectation Failed");
  for (const std::string& value : std::initializer_list<std::string>{"200-ok", "100-continue, x", "", std::string(40, 'e')}) {
    EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nExpect: " + value +
                                    "\r\nContent-Length: " + std::to_string(kGet.size()) +
                                    "\r\n\r\n" + kGet),
              failed)
        << value;
  }
}

TEST(ResponderTest, EachPipelinedRequestStartsItsOwnDeadlines) {
  http::Responder responder(http::Limits{}, nullptr);
  Connection c(responder);
  // Each read completes a head and ends a few bytes into the next: a request began in each.
  http::ReadResult r = c.read("GET / HTTP/1.1\r\nHo");
  EXPECT_TRUE(r.in_head);
  EXPECT_TRUE(r.request_began);
  for (int i = 0; i < 3; ++i) {
    r = c.read("st: x\r\n\r\nGET / HTTP/1.1\r\nHo");
    EXPECT_TRUE(r.in_head);
    EXPECT_TRUE(r.request_began);
  }
  // A read that goes on in the same head: its deadline keeps running.
  r = c.read("st: x\r\nX-A: 1");
  EXPECT_TRUE(r.in_head);
  EXPECT_FALSE(r.request_began);
  // The head ends, its body does not: the same request goes on in its body.
  r = c.read("\r\nContent-Length: 4\r\n\r\nab");
  EXPECT_FALSE(r.in_head);
  EXPECT_FALSE(r.request_began);
  EXPECT_TRUE(r.keep_state);
  // The body ends and the next request's does not, chunked, then in its trailers: the read
  // that began it says so, the one that goes on in it does not.
  r = c.read("cdPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n");
  EXPECT_FALSE(r.in_head);
  EXPECT_TRUE(r.request_began);
  r = c.read("a\r\n0\r\nX-Trailer: 1");
  EXPECT_FALSE(r.in_head);
  EXPECT_FALSE(r.request_began);
  EXPECT_TRUE(r.keep_state);
  r = c.read("\r\n\r\n");
  EXPECT_FALSE(r.request_began);
  EXPECT_FALSE(r.keep_state);
  EXPECT_EQ(normalise(c.sent()),
            kHello + kHello + kHello + kHello +
                response("405 Method Not Allowed", "Method Not Allowed", true,
                         "Allow: GET, HEAD\r\n"));
}

// Found by tests/fuzz/http_request_fuzz: the response said keep-alive, then the connection
// closed, since llhttp parses nothing after an upgrade.
TEST(ResponderTest, UpgradeRequestIsAnsweredAsPlainAndCloses) {
  http::Responder responder(http::Limits{}, nullptr);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\n\r\n" + kGet),
            response("200 OK", "Hello World!", false));
}

// `response` as sent to HEAD: the same head, Content-Length included, without the body.
std::string without_body(const std::string& response, const std::string& body) {
  return response.substr(0, response.size() - body.size());
}

// RFC 9110 9.3.2: no response to HEAD has content, an error's neither. llhttp keeps the
// method of the last request until the next one's is parsed, so a request whose method was
// not parsed yet gets its error's body even behind a HEAD.
TEST(ResponderTest, ErrorResponsesToHeadHaveNoBody) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string head = "HEAD / HTTP/1.1\r\n";
  const auto head_error = [](int status, const std::string& reason) {
    return without_body(error_response(status, reason), reason);
  };
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, head + "Host: a\r\nHost: b\r\n\r\n" + kGet),
            head_error(400, "Bad Request"));
  EXPECT_EQ(answer(responder, "HEAD /a b HTTP/1.1\r\nHost: x\r\n\r\n" + kGet),
            head_error(400, "Bad Request"));
  // llhttp checks a target's bytes before on_url sees them: the same wherever reads end.
  EXPECT_EQ(answer(responder, "HEAD /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n" + kGet),
            head_error(400, "Bad Request"));
  EXPECT_EQ(answer(responder, head + "Host: x\r\nContent-Length: 2000000\r\n\r\n"),
            head_error(413, "Content Too Large"));
  EXPECT_EQ(answer(responder, head + "Host: x\r\nExpect: 200-ok\r\n\r\n"),
            head_error(417, "Expectation Failed"));
  EXPECT_EQ(answer(responder, head + "Host: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            head_error(501, "Not Implemented"));
  EXPECT_EQ(answer(responder, "HEAD / HTTP/2.0\r\nHost: x\r\n\r\n"),
            head_error(505, "HTTP Version Not Supported"));
  EXPECT_EQ(answer(responder, "HEAD / HTTP/0.9\r\nHost: x\r\n\r\n"),
            head_error(505, "HTTP Version Not Supported"));
  // The GET's error behind a HEAD, and an unparsed method behind one, have their bodies.
  const std::string hello_head = without_body(kHello, "Hello World!");
  EXPECT_EQ(answer(responder, head + "Host: x\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            hello_head + bad);
  EXPECT_EQ(answer(responder, head + "Host: x\r\n\r\nNOT HTTP\r\n\r\n"), hello_head + bad);
  EXPECT_EQ(answer(responder, head + "Host: x\r\n\r\nHEADX / HTTP/1.1\r\n\r\n"),
            hello_head + bad);
  // The limits: 414 stops the target at its first bytes, 431 in the headers.
  http::Limits limits;
  limits.max_url = 4;
  limits.max_headers = 1;
  http::Responder limited(limits, nullptr);
  EXPECT_EQ(answer(limited, "HEAD /abcd HTTP/1.1\r\nHost: x\r\n\r\n"),
            head_error(414, "URI Too Long"));
  EXPECT_EQ(answer(limited, head + "Host: x\r\nA: 1\r\n\r\n"),
            head_error(431, "Request Header Fields Too Large"));
}

// RFC 9110 5.5: whitespace after a field value is no part of it. llhttp 8.1 passes it on, and
// a date followed by a space or tab was read as no date: the whole file (200), not a 304.
TEST(ResponderTest, IfModifiedSinceFollowedByWhitespaceGives304) {
  const testing_support::OneFileRoot root = testing_support::one_file_root("responder");
  ASSERT_NE(root.files, nullptr);
  http::Responder responder(http::Limits{}, root.files.get());
  const std::string since = testing_support::mtime_date(root.path);
  ASSERT_FALSE(since.empty());
  // The last run of spaces is longer than a value is kept.
  for (const std::string& after :
       std::initializer_list<std::string>{"", " ", "\t", " \t ", std::string(30, ' ')}) {
    http::Output out;
    responder.parse(nullptr,
                    "GET /a.txt HTTP/1.1\r\nHost: x\r\n"
                    "If-Modified-Since: " + since + after + "\r\n\r\n",
                    &out);
    for (const http::FileBody& body : out.files) std::fclose(body.file);
    EXPECT_EQ(out.bytes.substr(0, out.bytes.find("\r\n")), "HTTP/1.1 304 Not Modified")
        << "value followed by \"" << after << "\"";
  }
}

// --- File bodies read into the response (kSmallFileBytes) --------------------------------

std::string get(const std::string& target, const std::string& method = "GET") {
  return method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n";
}

// A root with a.txt ("abc"), small.bin (kSmallFileBytes bytes) and large.bin (one more).
struct SizedFilesRoot {
  testing_support::OneFileRoot root = testing_support::one_file_root("responder_sized");
  std::string small, large;

  SizedFilesRoot() {
    for (std::size_t i = 0; i <= http::kSmallFileBytes; ++i) {
      large += static_cast<char>('a' + i % 26);
    }
    small = large.substr(0, http::kSmallFileBytes);
    write("small.bin", small);
    write("large.bin", large);
  }
  void write(const std::string& name, const std::string& data) const {
    FILE* f = std::fopen((root.root + "/" + name).c_str(), "w");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
    std::fclose(f);
  }
};

// The bytes of an Output as the client receives them: each file body read into its place,
// and its FILE* closed, as its holder must.
std::string stream_of(http::Output& out) {
  std::string s;
  std::size_t from = 0;
  for (const http::FileBody& f : out.files) {
    s.append(out.bytes, from, f.at - from);
    std::string body(f.size, '\0');
    EXPECT_EQ(std::fread(body.data(), 1, f.size, f.file), f.size);
    std::fclose(f.file);
    s += body;
    from = f.at;
  }
  return s + out.bytes.substr(from);
}

TEST(ResponderTest, SmallFilesAreReadIntoTheResponseAndLargerOnesOwedAsFileBodies) {
  const SizedFilesRoot b;
  ASSERT_NE(b.root.files, nullptr);
  http::Responder responder(http::Limits{}, b.root.files.get());
  http::Output out;
  responder.parse(
      nullptr, get("/small.bin") + get("/a.txt") + get("/large.bin") + get("/small.bin", "HEAD"),
      &out);
  ASSERT_EQ(out.files.size(), 1u);  // large.bin's: the others' fds are closed already
  EXPECT_EQ(out.files[0].size, b.large.size());
  EXPECT_EQ(out.bytes.compare(out.files[0].at - 4, 4, "\r\n\r\n"), 0);  // right after its head
  // The responses as received: each Content-Length, and the body that follows (HEAD: none).
  const std::string got = stream_of(out);
  std::size_t at = 0;
  const auto next = [&](bool head) {
    const std::size_t end = got.find("\r\n\r\n", at) + 4;
    const std::size_t length = std::stoul(got.substr(got.find("Content-Length: ", at) + 16));
    const std::string body = head ? "" : got.substr(end, length);
    at = head ? end : end + length;
    return std::make_pair(length, body);
  };
  EXPECT_EQ(next(false), std::make_pair(b.small.size(), b.small));
  EXPECT_EQ(next(false), std::make_pair(std::size_t{3}, std::string("abc")));
  EXPECT_EQ(next(false), std::make_pair(b.large.size(), b.large));
  EXPECT_EQ(next(true), std::make_pair(b.small.size(), std::string()));
  EXPECT_EQ(at, got.size());
}

// A small file is read after its fstat: if it reads shorter than the size its Content-Length
// came from (it shrank meanwhile), the response would lie about its length and the client
// would take the next response's bytes for the rest of the body. sysfs attributes read that
// way (4096 bytes by fstat, a few by read), with no race to set up.
TEST(ResponderTest, SmallFileThatReadsShorterThanItsSizeGets500) {
  const std::unique_ptr<http::StaticFiles> cpu = http::StaticFiles::open("/sys/devices/system/cpu");
  struct stat st;
  if (!cpu || stat("/sys/devices/system/cpu/online", &st) != 0 || st.st_size == 0 ||
      static_cast<std::size_t>(st.st_size) > http::kSmallFileBytes) {
    GTEST_SKIP() << "no /sys/devices/system/cpu/online of a size up to kSmallFileBytes";
  }
  http::Responder responder(http::Limits{}, cpu.get());
  http::Output out;
  responder.parse(nullptr, get("/online") + kGet, &out);
  EXPECT_TRUE(out.files.empty());
  EXPECT_EQ(normalise(out.bytes),
            response("500 Internal Server Error", "Internal Server Error", true) + kHello);
}

// --- Bounds on what one connection is owed at once (kMaxFileBodies, kMaxOutputBytes) -----

std::string repeat(const std::string& s, std::size_t times) {
  std::string out;
  for (std::size_t i = 0; i < times; ++i) out += s;
  return out;
}

// What a connection receives for `input` in one read, parsed as the server parses it: after a
// pause, the rest once the Output was sent (no file bodies owed any more). *parses: how many.
std::string received(http::Responder& responder, std::string_view input, int* parses) {
  std::string got;
  *parses = 0;
  for (;;) {
    http::Output out;
    responder.parse(nullptr, input, &out);
    ++*parses;
    got += stream_of(out);
    if (!responder.paused()) return got;
    input.remove_prefix(input.size() - responder.unparsed());
  }
}

TEST(ResponderTest, FileBodiesOwedStopTheParseAtTheCapAndTheRestFollowsUnchanged) {
  const SizedFilesRoot b;
  ASSERT_NE(b.root.files, nullptr);
  http::Responder responder(http::Limits{}, b.root.files.get());
  const std::string pair = get("/large.bin") + kGet;
  const std::string input = repeat(pair, 40);
  http::Output out;
  http::ReadResult r = responder.parse(nullptr, input, &out);
  EXPECT_TRUE(responder.paused());
  EXPECT_FALSE(r.keep_state);
  EXPECT_EQ(out.files.size(), http::kMaxFileBodies);
  // Right after the request of the last body: its "GET /" is the first byte not parsed.
  EXPECT_EQ(responder.unparsed(), input.size() - http::kMaxFileBodies * pair.size() + kGet.size());
  stream_of(out);
  // Bodies owed already count: three more reach the cap; at the cap, a request without a body
  // goes on (it holds no file), and the next body pauses the parse.
  out = {};
  r = responder.parse(nullptr, input, &out, http::kMaxFileBodies - 3);
  EXPECT_TRUE(responder.paused());
  EXPECT_EQ(out.files.size(), 3u);
  stream_of(out);
  out = {};
  r = responder.parse(nullptr, kGet + pair, &out, http::kMaxFileBodies);
  EXPECT_TRUE(responder.paused());
  EXPECT_EQ(responder.unparsed(), kGet.size());
  EXPECT_EQ(out.files.size(), 1u);
  stream_of(out);
  // Parsed on from each pause, the 80 responses are those of the requests parsed one by one.
  int parses = 0;
  const std::string got = received(responder, input, &parses);
  EXPECT_EQ(parses, 3);  // 16 bodies, 16, then the last 8
  std::string one_by_one;
  for (int i = 0; i < 40; ++i) one_by_one += received(responder, pair, &parses);
  EXPECT_TRUE(got == one_by_one) << "the paused parses sent other bytes";
}

// How many "Hello World!" responses reach kMaxOutputBytes (each is as long: a Date value has
// one length).
std::size_t hellos_to_reach_the_bound(http::Responder& responder) {
  http::Output one;
  responder.parse(nullptr, kGet, &one);
  return (http::kMaxOutputBytes + one.bytes.size() - 1) / one.bytes.size();
}

TEST(ResponderTest, ResponseBytesStopTheParseOnceTheyReachTheBound) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::size_t answered = hellos_to_reach_the_bound(responder);
  const std::size_t sent = 2 * answered + 7;
  http::Output out;
  responder.parse(nullptr, repeat(kGet, sent), &out);
  EXPECT_TRUE(responder.paused());
  EXPECT_EQ(normalise(out.bytes), repeat(kHello, answered));
  EXPECT_EQ(responder.unparsed(), (sent - answered) * kGet.size());
  Connection c(responder);
  c.read(repeat(kGet, sent));
  EXPECT_FALSE(responder.paused());
  EXPECT_EQ(c.parses(), 3);
  EXPECT_TRUE(normalise(c.sent()) == repeat(kHello, sent));
}

// A pause in the read that ends a request begun earlier leaves the connection between
// requests: its Conn may go (keep_state false), and kept, parses on as a fresh state does.
TEST(ResponderTest, PauseAfterARequestBegunInAnEarlierReadLeavesNoStateToKeep) {
  http::Responder responder(http::Limits{}, nullptr);
  http::Output out;
  ASSERT_TRUE(responder.parse(nullptr, "GET / HTTP/1.1\r\nHo", &out).keep_state);
  http::Conn own(responder.scratch());
  const std::size_t sent = hellos_to_reach_the_bound(responder) + 10;  // one pause, then 10
  const std::string input = "st: x\r\n\r\n" + repeat(kGet, sent - 1);
  const http::ReadResult r = responder.parse(&own, input, &out);
  EXPECT_TRUE(responder.paused());
  EXPECT_FALSE(r.keep_state);
  EXPECT_FALSE(r.in_head);
  const std::string rest = input.substr(input.size() - responder.unparsed());
  EXPECT_EQ(responder.unparsed(), 10 * kGet.size());
  http::Output kept, fresh;
  const http::ReadResult kept_result = responder.parse(&own, rest, &kept);
  EXPECT_FALSE(kept_result.keep_state || responder.paused());
  responder.parse(nullptr, rest, &fresh);
  EXPECT_FALSE(responder.paused());
  EXPECT_EQ(kept.bytes, fresh.bytes);
  EXPECT_TRUE(normalise(out.bytes + fresh.bytes) == repeat(kHello, sent));
}

TEST(ResponderTest, DateLineIsAnImfFixdate) {
  http::Responder responder(http::Limits{}, nullptr);
  http::Output out;
  responder.parse(nullptr, kGet, &out);
  const std::size_t at = out.bytes.find("\r\nDate: ");
  ASSERT_NE(at, std::string::npos) << out.bytes;
  const std::string value = out.bytes.substr(at + 8, out.bytes.find("\r\n", at + 8) - at - 8);
  std::tm tm = {};
  const char* end = strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  EXPECT_TRUE(end && !*end) << value;
}

}  // namespace
