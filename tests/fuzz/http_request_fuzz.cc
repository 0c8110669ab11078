// libFuzzer target: the HTTP core (tools/http/responder.h) fed as tools/http_server feeds it.
// The input is the bytes a client sends on one connection; kReadMark cuts it into reads (as
// h2o's fuzz driver cuts its input at a marker), so the fuzzer chooses where reads end. Each
// input runs on two servers: default limits and nothing but "/" to serve, and tiny limits with
// a --root (files, a FIFO, symlinks out) and two pages. On each, the same input is parsed as
// three connections: in one read (the reference), in the marked reads, and one byte per read,
// the last two interleaved on one Responder, as connections of one shard are; each read is a
// heap block of its own, freed once parsed. A parse that pauses at a bound is followed by one
// of the rest, as the server parses it once the Output is sent. Asserted:
// - split-point independence: the three connections get the same response bytes, the same
//   file bodies at the same offsets, and finish at the same point, whatever the reads (one
//   allowance, for input both over a limit and malformed: 400 or the limit's status for the
//   final error; see check_same);
// - every response is well-formed: "HTTP/1.1 ", a 3-digit status, a reason, header lines
//   "Name: value" with no bare CR or LF, the blank line, then a body of its Content-Length
//   (none for 1xx, 204, 304 or a HEAD), or the file body the Output places there (of that size);
// - the ReadResult is consistent (in_head or request_began implies keep_state, finish implies
//   keep_state and neither in_head nor request_began, a kept Conn that finished says
//   finished(), paused implies none of them and an Output at a bound, the unparsed rest inside
//   the read),
//   and a "Connection: close" response is the last one, given exactly when the connection
//   finishes;
// - no crash, leak (ASan), undefined behaviour (UBSan) or hang (libFuzzer's -timeout), and
//   every FILE* the Output holds is a regular file of the announced size, over kSmallFileBytes
//   (then closed, as its holder must).
// The Date line is fixed (refresh_date with a constant) so that the outputs compare exactly.
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tests/fuzz/fuzz_support.h"
#include "tools/http/responder.h"
#include "tools/http/static_files.h"

namespace {

namespace http = tools::http;
using fuzz_support::write_file;

// Where one read ends and the next begins (in http.dict, so the fuzzer finds it).
constexpr std::string_view kReadMark = "\n--READ--\n";
constexpr std::time_t kDate = 1700000000;  // every Date line says this

// Pages as tools/http_server --metrics has them: one that echoes its query, one that fails.
bool echo_page(std::string_view query, std::string* body) {
  body->append("query=").append(query);
  return true;
}
bool failing_page(std::string_view, std::string*) { return false; }
constexpr http::Page kPages[] = {
    {"/echo", "text/plain; version=0.0.4", echo_page},
    {"/broken", "application/json", failing_page},
};

// A root with files of three content types, an empty file, one just over kSmallFileBytes (owed
// as a FileBody; the others are read into the response), a FIFO (which must never block the
// parse), symlinks out of the root, and fixed mtimes (Last-Modified, If-Modified-Since).
std::unique_ptr<http::StaticFiles> make_root() {
  const std::string base = fuzz_support::make_scratch_dir("http_request_fuzz");
  const std::string dir = base + "/root";
  FUZZ_CHECK(mkdir(dir.c_str(), 0755) == 0 && mkdir((dir + "/sub").c_str(), 0755) == 0, dir);
  write_file(base + "/secret", "secret");
  write_file(dir + "/index.html", "<p>index</p>\n");
  write_file(dir + "/a.txt", "a text file\n");
  write_file(dir + "/sub/b.css", "b{}\n");
  write_file(dir + "/empty", "");
  write_file(dir + "/big.bin", std::string(http::kSmallFileBytes + 1, 'b'));
  FUZZ_CHECK(mkfifo((dir + "/fifo").c_str(), 0644) == 0, dir);
  FUZZ_CHECK(symlink("../secret", (dir + "/out").c_str()) == 0, dir);
  FUZZ_CHECK(symlink("..", (dir + "/up").c_str()) == 0, dir);
  const timeval times[2] = {{kDate - 86400, 0}, {kDate - 86400, 0}};
  for (const char* name : {"index.html", "a.txt", "sub/b.css", "empty", "big.bin"}) {
    FUZZ_CHECK(utimes((dir + "/" + name).c_str(), times) == 0, name);
  }
  auto files = http::StaticFiles::open(dir.c_str());
  FUZZ_CHECK(files != nullptr, dir);
  return files;
}

// What a connection was sent: the response bytes, the file bodies (offset in `bytes`, size),
// and whether it finished.
struct Sent {
  std::string bytes;
  std::vector<std::pair<std::size_t, std::size_t>> files;
  bool finished = false;
};

// One connection driven as tools/http_server's on_data drives it: a Conn of its own only while
// keep_state says so, nothing parsed once it finished, empty reads never made.
class Connection {
 public:
  explicit Connection(http::Responder& responder) : responder_(responder) {}

  void read(std::string_view bytes) {
    if (sent_.finished || bytes.empty()) return;
    // Each read in a heap block of its own size, freed once parsed, as the server's buffer is
    // reused: ASan catches a byte read past the read, or kept and read after it.
    const std::unique_ptr<char[]> buffer(new char[bytes.size()]);
    bytes.copy(buffer.get(), bytes.size());
    std::string_view input(buffer.get(), bytes.size());
    for (;;) {
      http::Output out;
      const http::ReadResult result = responder_.parse(own_.get(), input, &out);
      FUZZ_CHECK(!responder_.paused() || out.files.size() >= http::kMaxFileBodies ||
                     out.bytes.size() >= http::kMaxOutputBytes,
                 "paused below the bounds");
      take(out);
      FUZZ_CHECK(!result.in_head || result.keep_state, "in_head without keep_state");
      FUZZ_CHECK(!result.finish || (result.keep_state && !result.in_head &&
                                    !result.request_began),
                 "finish");
      FUZZ_CHECK(!result.request_began || result.keep_state, "request_began without keep_state");
      FUZZ_CHECK(!responder_.paused() || (!result.finish && !result.keep_state &&
                                    !result.in_head && !result.request_began &&
                                    responder_.unparsed() <= input.size()),
                 "paused");
      if (result.keep_state && !own_) {
        own_ = std::make_unique<http::Conn>(responder_.scratch());
      } else if (!result.keep_state && own_) {
        own_.reset();
      }
      if (own_) FUZZ_CHECK(own_->finished() == result.finish, "Conn::finished() != finish");
      sent_.finished = result.finish;
      if (!responder_.paused()) return;
      input.remove_prefix(input.size() - responder_.unparsed());
    }
  }

  const Sent& sent() const { return sent_; }

 private:
  // Appends one read's Output, closing its files as their holder must.
  void take(http::Output& out) {
    std::size_t last = 0;
    for (const http::FileBody& f : out.files) {
      FUZZ_CHECK(f.file != nullptr && f.at >= last && f.at <= out.bytes.size(), "file offsets");
      last = f.at;
      struct stat st;
      FUZZ_CHECK(fstat(fileno(f.file), &st) == 0 && S_ISREG(st.st_mode) &&
                     static_cast<std::size_t>(st.st_size) == f.size &&
                     f.size > http::kSmallFileBytes,
                 "a file body that is not a regular file of its size, over kSmallFileBytes");
      sent_.files.push_back({sent_.bytes.size() + f.at, f.size});
      std::fclose(f.file);
    }
    sent_.bytes += out.bytes;
  }

  http::Responder& responder_;
  std::unique_ptr<http::Conn> own_;
  Sent sent_;
};

// s (its first 400 bytes) for a message: printable ASCII as is, other bytes as \xNN.
std::string show(std::string_view s) {
  std::string out;
  for (const char c : s.substr(0, 400)) {
    if (c >= 0x20 && c < 0x7f) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    }
  }
  return out;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Checks that `s` is a sequence of well-formed responses (see the top of the file). Returns
// where the last one starts and its status (0, 0 if there is none).
std::pair<std::size_t, int> check_responses(const Sent& s) {
  const std::string& b = s.bytes;
  std::size_t at = 0, file = 0;
  std::pair<std::size_t, int> last{0, 0};
  bool closed = false;
  while (at < b.size()) {
    FUZZ_CHECK(!closed, "a response after Connection: close: " + show(b.substr(at)));
    const std::string_view rest = std::string_view(b).substr(at);
    FUZZ_CHECK(rest.size() >= 13 && rest.substr(0, 9) == "HTTP/1.1 " && is_digit(rest[9]) &&
                   is_digit(rest[10]) && is_digit(rest[11]) && rest[12] == ' ',
               "status line: " + show(rest));
    const int status = (rest[9] - '0') * 100 + (rest[10] - '0') * 10 + (rest[11] - '0');
    last = {at, status};
    const std::size_t head_end = rest.find("\r\n\r\n");
    FUZZ_CHECK(head_end != std::string_view::npos, "no end of head: " + show(rest));
    const std::string_view head = rest.substr(0, head_end + 2);  // each line with its CRLF
    long long length = -1;
    std::size_t line = head.find("\r\n") + 2;
    while (line < head.size()) {
      const std::size_t end = head.find("\r\n", line);
      const std::string_view field = head.substr(line, end - line);
      const std::size_t colon = field.find(": ");
      FUZZ_CHECK(colon != std::string_view::npos && colon > 0, "header line: " + show(field));
      FUZZ_CHECK(field.find_first_of("\r\n") == std::string_view::npos,
                 "bare CR/LF: " + show(head));
      const std::string_view name = field.substr(0, colon), value = field.substr(colon + 2);
      if (name == "Content-Length") {
        FUZZ_CHECK(length < 0 && !value.empty(), "Content-Length: " + show(head));
        length = 0;
        for (const char c : value) {
          FUZZ_CHECK(is_digit(c), "Content-Length: " + show(head));
          length = length * 10 + (c - '0');
        }
      }
      if (name == "Connection" && value == "close") closed = true;
      line = end + 2;
    }
    std::size_t body = at + head_end + 4;
    const bool bodiless = status / 100 == 1 || status == 204 || status == 304;
    FUZZ_CHECK(bodiless || length >= 0, "no Content-Length: " + show(head));
    if (file < s.files.size() && s.files[file].first == body) {
      FUZZ_CHECK(status == 200 && static_cast<std::size_t>(length) == s.files[file].second,
                 "a file body that its head does not announce: " + show(head));
      ++file;
    } else if (!bodiless && length > 0) {
      // A HEAD's response has no body: the next response (or the end) follows the head.
      const auto next_at = [&](std::size_t p) {
        return p == b.size() || std::string_view(b).substr(p, 9) == "HTTP/1.1 ";
      };
      const std::size_t with_body = body + static_cast<std::size_t>(length);
      if (with_body <= b.size() && next_at(with_body)) {
        body = with_body;
      } else {
        FUZZ_CHECK(next_at(body), "body shorter than Content-Length: " + show(rest));
      }
    }
    at = body;
  }
  FUZZ_CHECK(file == s.files.size(), "a file body outside any response");
  FUZZ_CHECK(closed == s.finished, std::string("Connection: close ") +
                                       (closed ? "sent" : "not sent") + " but finish " +
                                       (s.finished ? "true" : "false") + ": " + show(b));
  return last;
}

// Whether one status is a limit of ours (413, 414, 431) and the other llhttp's 400.
bool limit_or_malformed(int a, int b) {
  const auto limit = [](int s) { return s == 413 || s == 414 || s == 431; };
  return (limit(a) && b == 400) || (a == 400 && limit(b));
}

// `b` must have been sent what `a` was. One exception: input both over a limit and malformed
// (a URL past max_url that also holds a byte llhttp refuses) may meet either check first,
// depending on where reads end (llhttp checks the bytes of a span before the callback that
// counts them sees it), so the final error may be 400 one way and the limit's status the
// other; everything before it, what is served and where the connection ends, may not differ.
void check_same(const Sent& a, const Sent& b, const char* what) {
  FUZZ_CHECK(a.files == b.files, std::string(what) + ": file bodies differ");
  FUZZ_CHECK(a.finished == b.finished, std::string(what) + ": finish differs");
  if (a.bytes == b.bytes) return;
  const auto [a_last, a_status] = check_responses(a);
  const auto [b_last, b_status] = check_responses(b);
  FUZZ_CHECK(
      a.finished && limit_or_malformed(a_status, b_status) && a_last == b_last &&
          a.bytes.compare(0, a_last, b.bytes, 0, b_last) == 0,
      std::string(what) + " differs from one read:\n" + show(a.bytes) + "\n---\n" + show(b.bytes));
}

void run(const http::Limits& limits, const http::StaticFiles* files,
         std::span<const http::Page> pages, const std::vector<std::string_view>& reads,
         const std::string& whole) {
  http::Responder responder(limits, files, pages);
  responder.refresh_date(kDate);

  Connection one(responder);
  one.read(whole);
  check_responses(one.sent());

  // The marked reads and single bytes interleaved on the same Responder: a connection that
  // ends mid-request must keep its state apart from the other one's (scratch or Conn).
  Connection marked(responder), bytewise(responder);
  std::size_t next_read = 0, next_byte = 0;
  while (next_read < reads.size() || next_byte < whole.size()) {
    if (next_read < reads.size()) marked.read(reads[next_read++]);
    if (next_byte < whole.size()) bytewise.read(std::string_view(whole).substr(next_byte++, 1));
  }
  check_same(one.sent(), marked.sent(), "marked reads");
  check_same(one.sent(), bytewise.sent(), "one byte per read");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static const std::unique_ptr<http::StaticFiles> root = make_root();
  const int free_fd = fuzz_support::lowest_free_fd();

  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> reads;
  std::string whole;
  for (std::size_t from = 0;;) {
    const std::size_t mark = input.find(kReadMark, from);
    reads.push_back(input.substr(from, mark - from));
    whole += reads.back();
    if (mark == std::string_view::npos) break;
    from = mark + kReadMark.size();
  }

  run(http::Limits{}, nullptr, {}, reads, whole);
  const http::Limits tiny{.max_url = 64, .max_header_bytes = 256, .max_headers = 8, .max_body = 64};
  run(tiny, root.get(), kPages, reads, whole);
  FUZZ_CHECK(fuzz_support::lowest_free_fd() == free_fd, "fd leaked");
  return 0;
}
