// tools/http/responder.cc fed the way tools/http_server feeds it, with each read in memory of
// its own that faults once the parse of it returns: the server reads into one stack buffer
// and overwrites it with the next read, so a pointer into a read that the responder keeps past
// that read must be caught, in every build and not only under ASan. Each read also lies flush
// against a page that faults, before it or after it, so that any byte read outside it faults.
// Inputs are split into two and three reads at every pair of offsets and into single bytes:
// what is sent must not depend on where reads end.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tests/tools/http/one_file_root.h"
#include "tools/http/responder.h"
#include "tools/http/static_files.h"

namespace {

namespace http = tools::http;

const std::string kGet = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

// Reads placed in mappings of their own. Each mapping is a guard page, the pages of the read,
// and a guard page; the read starts right after the first guard or ends right before the last.
// retire() makes the last read's mapping fault on any access until the Reads are destroyed
// (kept mapped, so that no later read can be given the same addresses).
class Reads {
 public:
  Reads() = default;
  Reads(const Reads&) = delete;
  Reads& operator=(const Reads&) = delete;
  ~Reads() {
    for (const Mapping& m : mappings_) munmap(m.base, m.size);
  }

  std::string_view place(std::string_view bytes, bool at_end) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t data = (bytes.size() + page - 1) / page * page;
    const std::size_t size = data + 2 * page;
    void* base = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return {};
    mappings_.push_back({base, size});
    char* const first = static_cast<char*>(base) + page;
    if (mprotect(first, data, PROT_READ | PROT_WRITE) != 0) return {};
    char* const at = at_end ? first + data - bytes.size() : first;
    std::memcpy(at, bytes.data(), bytes.size());
    return {at, bytes.size()};
  }

  // Only the last placed is still accessible: the others were retired with the reads before.
  void retire() {
    if (!mappings_.empty()) mprotect(mappings_.back().base, mappings_.back().size, PROT_NONE);
  }

 private:
  struct Mapping {
    void* base;
    std::size_t size;
  };
  std::vector<Mapping> mappings_;
};

// Where a Connection's reads lie: flush against a faulting page after them or before them
// (Reads), or on the heap, freed once parsed (cheaper; only ASan sees a stray access there).
enum class Placement { kGuardAfter, kGuardBefore, kHeap };

// One connection as tools/http_server drives it: a Conn of its own only while keep_state says
// so, and a finished connection is parsed no more.
class Connection {
 public:
  Connection(http::Responder& responder, Placement placement)
      : responder_(responder), placement_(placement) {}

  http::ReadResult read(std::string_view bytes) {
    std::unique_ptr<char[]> heap;
    std::string_view placed;
    if (placement_ == Placement::kHeap) {
      heap.reset(new char[bytes.size()]);
      std::memcpy(heap.get(), bytes.data(), bytes.size());
      placed = std::string_view(heap.get(), bytes.size());
    } else {
      placed = reads_.place(bytes, placement_ == Placement::kGuardAfter);
      EXPECT_EQ(placed.size(), bytes.size()) << "mmap";
    }
    http::Output out;
    const http::ReadResult result = responder_.parse(own_.get(), placed, &out);
    EXPECT_FALSE(responder_.paused()) << "the inputs here stay under the Responder's bounds";
    reads_.retire();
    sent_ += out.bytes;
    if (result.keep_state && !own_) {
      own_ = std::make_unique<http::Conn>(responder_.scratch());
    } else if (!result.keep_state && own_) {
      own_.reset();
    }
    return result;
  }

  const std::string& sent() const { return sent_; }

 private:
  http::Responder& responder_;
  const Placement placement_;
  Reads reads_;
  std::unique_ptr<http::Conn> own_;
  std::string sent_;
};

// What a fresh connection is sent when `input` is read in pieces that end at `ends` (ascending
// offsets inside it), read by read until one finishes.
std::string sent_for(http::Responder& responder, const std::string& input,
                     const std::vector<std::size_t>& ends, Placement placement) {
  Connection c(responder, placement);
  std::size_t from = 0;
  for (std::size_t i = 0; i <= ends.size(); ++i) {
    const std::size_t to = i < ends.size() ? ends[i] : input.size();
    if (c.read(std::string_view(input).substr(from, to - from)).finish) break;
    from = to;
  }
  return c.sent();
}

// Normalises each Date value (29 bytes) to "<date>".
std::string normalise(std::string s) {
  for (std::size_t at = 0; (at = s.find("\r\nDate: ", at)) != std::string::npos;) {
    s.replace(at + 8, 29, "<date>");
    at += 8;
  }
  return s;
}

// What a fresh connection is sent for `input` read at once, normalised, after checking that
// every split into two reads and into single bytes (each read flush against a faulting page on
// either side), and every split into three (on the heap), sends the same bytes. The first
// splits that differ are named.
std::string answer(http::Responder& responder, const std::string& input) {
  const std::string whole = sent_for(responder, input, {}, Placement::kGuardAfter);
  int failures = 0;
  const auto check = [&](const std::vector<std::size_t>& ends, Placement placement) {
    const std::string sent = sent_for(responder, input, ends, placement);
    if (sent == whole || ++failures > 3) return;
    std::string where;
    for (const std::size_t end : ends) where += " " + std::to_string(end);
    ADD_FAILURE() << "reads ending at" << where << " send\n"
                  << normalise(sent) << "\nnot\n"
                  << normalise(whole);
  };
  std::vector<std::size_t> bytes;
  for (std::size_t a = 1; a < input.size(); ++a) {
    bytes.push_back(a);
    check({a}, Placement::kGuardAfter);
    check({a}, Placement::kGuardBefore);
    for (std::size_t b = a + 1; b < input.size(); ++b) check({a, b}, Placement::kHeap);
  }
  check(bytes, Placement::kGuardAfter);
  check(bytes, Placement::kGuardBefore);
  return normalise(whole);
}

std::string response(const std::string& status, const std::string& body, bool keep_alive,
                     const std::string& extra = "") {
  return "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nContent-Type: text/plain\r\nDate: <date>\r\n" + extra +
         (keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n") + body;
}
const std::string kHello = response("200 OK", "Hello World!", true);
const std::string kNotAllowed =
    response("405 Method Not Allowed", "Method Not Allowed", true, "Allow: GET, HEAD\r\n");

std::string error_response(int status, const std::string& reason) {
  return response(std::to_string(status) + " " + reason, reason, false);
}

const std::string kChunkedPost =
    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

// The inputs the responder's own tests split into two reads, here also into three and into
// single bytes, each read between faulting pages.
TEST(ResponderReadsTest, FramingChecksDoNotDependOnWhereReadsEnd) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string bad = error_response(400, "Bad Request");
  EXPECT_EQ(answer(responder, kChunkedPost + "5\r\nhelloXX0\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, kChunkedPost + "2\r\nhi\r\n5\r\nhello\r\n0\r\n\r\n" + kGet),
            kNotAllowed + kHello);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\t chunked\r\n"
                              "\r\n0\r\n\r\n" + kGet),
            bad);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              " , gzip\r\n\r\n0\r\n\r\n" + kGet),
            bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET / HTTP/1.1\r\nHost : x\r\n\r\n" + kGet), bad);
  EXPECT_EQ(answer(responder, "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Long-Name: v\r\n\r\n" + kGet),
            response("404 Not Found", "Not Found", true) + kHello);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              "Content-Length: 1\r\n\r\nx" + kGet),
            "HTTP/1.1 100 Continue\r\n\r\n" + kNotAllowed + kHello);
}

// A trailer field's name that a read ends in was left where it lay in that read (parse() keeps
// a name only when the read ends in a request's head, and trailers come after it), and
// on_header_field_complete compares it there in the next read: a read of freed memory (of the
// server's reused stack buffer, past its end when the first read filled it). Run in a child:
// the read faults.
TEST(ResponderReadsTest, TrailerFieldNameEndedInByAReadIsNotReadFromThatRead) {
  EXPECT_EXIT(
      {
        http::Responder responder(http::Limits{}, nullptr);
        Connection c(responder, Placement::kGuardAfter);
        c.read(kChunkedPost + "0\r\nHo");
        c.read("st: y\r\n\r\n" + kGet);
        std::exit(normalise(c.sent()) == kNotAllowed + kHello ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

// A Transfer-Encoding trailer (which llhttp 8.1 refuses: 501) whose value starts a read is
// taken for an obs-fold (400) when an earlier read ended right after a line end of the head:
// tail_ is updated only for reads that end in a head, so the fold check reads a stale byte.
TEST(ResponderReadsTest, TransferEncodingTrailerGetsTheSameStatusWhereverReadsEnd) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string input = kChunkedPost + "0\r\nTransfer-Encoding: gzip\r\n\r\n" + kGet;
  const std::string not_implemented = error_response(501, "Not Implemented");
  ASSERT_EQ(normalise(sent_for(responder, input, {}, Placement::kGuardAfter)), not_implemented);
  // Three reads: the first ends after the request line, the last starts at the value. (Not
  // every split: one inside the trailer's name faults, see the test above.)
  const std::size_t head_line = input.find("\r\n") + 2;
  const std::size_t value = input.find("gzip");
  EXPECT_EQ(normalise(sent_for(responder, input, {head_line, value}, Placement::kGuardAfter)), not_implemented);
}

// Conn::Seen counts Host and Transfer-Encoding fields in an unsigned char, so the 256th field
// brings the count back to 0 and the 257th to 1: with --max-headers above 256 (the flag allows
// up to 1,000,000), 257 Host fields pass as one, and 256 "Transfer-Encoding: gzip" fields and
// one "chunked" (the list "gzip, ..., chunked", which llhttp reads as chunked) as "chunked".
TEST(ResponderReadsTest, HostAndTransferEncodingCountsDoNotWrap) {
  http::Limits limits;
  limits.max_headers = 1000;
  http::Responder responder(limits, nullptr);
  std::string hosts;
  for (int i = 0; i < 257; ++i) hosts += "Host: x\r\n";
  Connection host(responder, Placement::kGuardAfter);
  host.read("GET / HTTP/1.1\r\n" + hosts + "\r\n");
  EXPECT_EQ(normalise(host.sent()), error_response(400, "Bad Request"));
  std::string codings;
  for (int i = 0; i < 256; ++i) codings += "Transfer-Encoding: gzip\r\n";
  Connection coding(responder, Placement::kGuardAfter);
  coding.read("POST / HTTP/1.1\r\nHost: x\r\n" + codings +
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_EQ(normalise(coding.sent()), error_response(501, "Not Implemented"));
}

// RFC 9110 5.5: whitespace around a field value is not part of it. Conn::Kept keeps the value
// with its trailing whitespace (llhttp 8.1 strips only the leading) up to kMaxTokenValue (16)
// bytes, so "chunked" followed by ten spaces overflows and is not chunked (501), and
// "100-continue" followed by five spaces is another expectation (417).
TEST(ResponderReadsTest, TrailingWhitespaceOfTransferEncodingAndExpectIsNotPartOfTheValue) {
  http::Responder responder(http::Limits{}, nullptr);
  const std::string spaces(10, ' ');
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked" + spaces +
                                  "\r\n\r\n0\r\n\r\n" + kGet),
            kNotAllowed + kHello);
  EXPECT_EQ(answer(responder, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue" + spaces +
                                  "\r\nContent-Length: 1\r\n\r\nx" + kGet),
            "HTTP/1.1 100 Continue\r\n\r\n" + kNotAllowed + kHello);
}

// Trailer fields are looked at as header fields are (on_header_field_complete does not tell
// them apart), so an If-Modified-Since trailer turns a file's 200 into 304. RFC 9110 6.5.1: a
// trailer field is not merged into the header section unless its definition allows it (that
// of If-Modified-Since does not). Not new in issue 10, but the fix of the test above (trailer
// names not looked at) fixes this too.
TEST(ResponderReadsTest, IfModifiedSinceTrailerDoesNotMakeA304) {
  const testing_support::OneFileRoot root = testing_support::one_file_root("responder_reads");
  ASSERT_NE(root.files, nullptr);
  http::Responder responder(http::Limits{}, root.files.get());
  const std::string since = testing_support::mtime_date(root.path);  // a 304 in the head
  ASSERT_FALSE(since.empty());
  http::Output out;
  responder.parse(nullptr,
                  "GET /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                  "If-Modified-Since: " + since + "\r\n\r\n",
                  &out);
  for (const http::FileBody& body : out.files) std::fclose(body.file);
  EXPECT_EQ(out.bytes.substr(0, out.bytes.find("\r\n")), "HTTP/1.1 200 OK") << out.bytes;
}

}  // namespace
