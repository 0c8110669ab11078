#include "tools/http/responder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "tools/http/http_date.h"
#include "tools/http/static_files.h"

// The CRLF after chunk data, a CR followed by another byte, whitespace before a field's colon
// and control bytes in the target are left to llhttp's strict parser: built without it, they
// would pass unchecked. third_party/system.BUILD defines this for llhttp.c and every includer
// of llhttp.h alike, so seeing it here means llhttp.c was built strict too.
static_assert(LLHTTP_STRICT_MODE, "llhttp must be built with LLHTTP_STRICT_MODE=1");

namespace tools::http {
namespace {

constexpr std::string_view kHello = "Hello World!";

std::string_view reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

void append_number(std::string& out, std::uint64_t n) {
  char number[24];
  out.append(number, std::to_chars(number, number + sizeof number, n).ptr);
}

// Appends one whole text/plain response to `out`; `date` is the Date line.
void respond(std::string& out, std::string_view date, int status, std::string_view body,
             bool keep_alive, bool head, std::string_view extra_headers = {},
             std::string_view content_type = "text/plain") {
  out.append("HTTP/1.1 ");
  append_number(out, static_cast<std::uint64_t>(status));
  out.append(" ");
  out.append(reason(status));
  out.append("\r\nContent-Length: ");
  append_number(out, body.size());
  out.append("\r\nContent-Type: ");
  out.append(content_type);
  out.append("\r\n");
  out.append(date);
  out.append(extra_headers);
  out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  if (!head) out.append(body);
}

// The status for a parser error llhttp found itself (`reason`: llhttp's text for it).
int status_for(llhttp_errno_t err, const char* reason) {
  switch (err) {
    case HPE_INVALID_TRANSFER_ENCODING:
      return 501;  // a coding other than chunked
    case HPE_INVALID_VERSION:
      // Two digits llhttp does not know (1.2 up, 3.0 up) are a version we do not support;
      // anything else there ("HTTP/01.1", "HTTP/x.1") is a malformed request line.
      return reason && std::strcmp(reason, "Invalid HTTP version") == 0 ? 505 : 400;
    default:
      return 400;
  }
}

// Out of line: its string and the exception paths it brings stay off the common request's
// path (on_message_complete), which pages are rare on. Like every response, it throws
// bad_alloc when out of memory (responder.h, Errors).
// `after_path`: what follows the target's path ("?query#fragment", either part absent).
[[gnu::noinline]] void serve_page(const Page& page, std::string_view after_path,
                                  llhttp_method_t method, bool keep_alive, bool head,
                                  std::string_view date, std::string& out) {
  if (method != HTTP_GET && !head) {
    respond(out, date, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
    return;
  }
  const std::string_view before_fragment = after_path.substr(0, after_path.find('#'));
  const std::string_view query = before_fragment.substr(before_fragment.empty() ? 0 : 1);
  std::string body;
  if (page.make(query, &body)) {
    respond(out, date, 200, body, keep_alive, head, {}, page.content_type);
  } else {
    respond(out, date, 500, reason(500), keep_alive, head);
  }
}

const Page* find_page(std::span<const Page> pages, std::string_view path) {
  for (const Page& page : pages) {
    if (page.path == path) return &page;
  }
  return nullptr;
}

// What the callbacks of one llhttp_execute work on; parser.data points at it for that call.
// `begin` is the start of the read being parsed.
struct Call {
  Responder& responder;
  Conn& conn;
  Output& out;
  const char* begin;
  unsigned files_owed;  // parse()'s: bodies of earlier Outputs not sent yet
  bool chunk_line_ended = false;  // on_chunk_header paused the parser (see parse())
};

// Closes a file's fd when it goes out of scope (a bad_alloc's unwinding too), unless released.
class FileFd {
 public:
  explicit FileFd(int fd) : fd_(fd) {}
  FileFd(const FileFd&) = delete;
  FileFd& operator=(const FileFd&) = delete;
  ~FileFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

using FilePtr = std::unique_ptr<FILE, int (*)(FILE*)>;

// Appends the `size` bytes of the file at fd (from offset 0) to out. False, with `out` as it
// was, when fewer came: a read error, or the file is shorter than `size` now (it shrank since
// the fstat its Content-Length came from, which the response must not contradict).
bool append_file(int fd, std::size_t size, std::string& out) {
  const std::size_t at = out.size();
  out.resize(at + size);
  for (std::size_t got = 0; got < size;) {
    const ssize_t n = pread(fd, out.data() + at + got, size - got, static_cast<off_t>(got));
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno != EINTR) {
      out.resize(at);
      return false;
    }
  }
  return true;
}

// Whether `text` is `lower` in any case, for `lower` of lower-case letters, digits and '-':
// setting bit 0x20 lower-cases a letter, and maps no other byte onto one of those but control
// bytes (CR onto '-', 0x10-0x19 onto digits), which llhttp passes in no field name or value.
// Inline: strncasecmp is a call per field of every request.
bool equals_ignoring_case(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  unsigned difference = 0;
  for (std::size_t i = 0; i < lower.size(); ++i) {
    difference |= static_cast<unsigned char>(text[i] | 0x20) ^ static_cast<unsigned char>(lower[i]);
  }
  return difference == 0;
}
// equals_ignoring_case() for K bytes at once (K = 1, 2, 4 or 8): their differences, or 0.
template <std::size_t K>
std::uint64_t differences(const char* text, const char* lower) {
  std::uint64_t t = 0, l = 0, lower_case = 0;
  std::memcpy(&t, text, K);
  std::memcpy(&l, lower, K);
  std::memset(&lower_case, 0x20, K);
  return (t | lower_case) ^ l;
}

// equals_ignoring_case() of a name of N bytes with `lower`, with no loop (GCC -O2 leaves
// short loops rolled): a handful of instructions for each of the names looked at.
template <std::size_t N>
bool is_field(const char* name, std::string_view lower) {
  constexpr std::size_t k8 = N / 8 * 8, k4 = k8 + (N % 8 >= 4 ? 4 : 0),
                        k2 = k4 + (N % 4 >= 2 ? 2 : 0);
  static_assert(N <= 24, "three eight-byte steps at most");
  std::uint64_t difference = 0;
  if constexpr (k8 >= 8) difference |= differences<8>(name, lower.data());
  if constexpr (k8 >= 16) difference |= differences<8>(name + 8, lower.data() + 8);
  if constexpr (k8 >= 24) difference |= differences<8>(name + 16, lower.data() + 16);
  if constexpr (k4 > k8) difference |= differences<4>(name + k8, lower.data() + k8);
  if constexpr (k2 > k4) difference |= differences<2>(name + k4, lower.data() + k4);
  if constexpr (N > k2) difference |= differences<1>(name + k2, lower.data() + k2);
  return difference == 0;
}

bool is_space_or_tab(char c) { return c == ' ' || c == '\t'; }

// A target that does not start with '/'. In absolute-form, "http://host/path?query" (RFC 9112
// 3.2.2: a server must accept it, as a proxy's client sends it), *path becomes its path ("/"
// for none) and *after_path what follows it; the host is not looked at (no virtual hosts
// here; Host is still required, check_head). Any other target ("*", another scheme) is left
// as it is: a path that does not start with '/', which no page, file or "/" matches.
[[gnu::noinline]] void absolute_form(std::string_view url, std::string_view* path,
                                     std::string_view* after_path) {
  const std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return;
  const std::string_view scheme = url.substr(0, scheme_end);
  if (!equals_ignoring_case(scheme, "http") && !equals_ignoring_case(scheme, "https")) return;
  std::string_view rest = url.substr(scheme_end + 3);
  rest.remove_prefix(std::min(rest.find_first_of("/?#"), rest.size()));  // the authority
  const std::size_t path_end = std::min(rest.find_first_of("?#"), rest.size());
  *path = path_end ? rest.substr(0, path_end) : std::string_view("/");
  *after_path = rest.substr(path_end);
}

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

}  // namespace

// The llhttp callbacks. A callback that finds a limit passed stops the parser with the status
// to answer (llhttp_execute then returns HPE_USER from a data callback, HPE_CB_* from the
// others); on_message_complete answers the request, and pauses the parser after one that
// closes, so that nothing behind it is parsed, or at a bound (see after_response).
struct Callbacks {
  static Call& call(llhttp_t* parser) { return *static_cast<Call*>(parser->data); }
  static Conn& conn(llhttp_t* parser) { return call(parser).conn; }
  static const Limits& limits(llhttp_t* parser) { return call(parser).responder.limits_; }

  static int fail(llhttp_t* parser, int status) {
    conn(parser).error_status_ = status;
    return -1;
  }

  static int on_message_begin(llhttp_t* parser) {
    Conn& c = conn(parser);
    c.in_message_ = true;
    c.headers_done_ = false;
    c.head_began_ = true;
    c.url_length_ = 0;
    c.header_bytes_ = 0;
    c.body_bytes_ = 0;
    c.headers_ = 0;
    c.field_length_ = 0;
    c.seen_ = {};
    c.ims_.clear();
    return 0;
  }

  static int on_url(llhttp_t* parser, const char* at, std::size_t length) {
    Conn& c = conn(parser);
    if (c.url_length_ + length > limits(parser).max_url) return fail(parser, 414);
    // llhttp calls on_url again for one target only when a read ended inside it (once per
    // read it spans), and parse() then copied what came so far to url_.
    if (c.url_length_ == 0) {
      c.url_at_ = at;
    } else {
      c.url_.append(at, length);
    }
    c.url_length_ += length;
    return 0;
  }

  static int on_header_field(llhttp_t* parser, const char* at, std::size_t length) {
    Conn& c = conn(parser);
    c.header_bytes_ += length;
    if (c.header_bytes_ > limits(parser).max_header_bytes) return fail(parser, 431);
    // llhttp calls a data callback again for one name only when a read ended inside it, and
    // parse() then kept what came so far in field_ (in a head; a trailer's name is not read).
    if (c.field_length_ == 0) {
      c.field_at_ = at;
    } else {
      keep_field(c, c.field_length_, at, length);
    }
    c.field_length_ += length;
    // The name ends here, if not in the next read (which calls this again); strict llhttp
    // allows nothing between it and the colon.
    c.ws_from_ = at + length;
    return 0;
  }

  // Copies to field_ at `offset` what fits of `length` bytes of the current name at `at`.
  static void keep_field(Conn& c, std::size_t offset, const char* at, std::size_t length) {
    if (offset < sizeof c.field_) {
      std::memcpy(c.field_ + offset, at, std::min(length, sizeof c.field_ - offset));
    }
  }

  static int on_header_field_complete(llhttp_t* parser) {
    Conn& c = conn(parser);
    if (++c.headers_ > limits(parser).max_headers) return fail(parser, 431);
    // ": b", a field without a name: llhttp 8.1 lets it through, strict mode too; a field name
    // is a token (RFC 9110 5.1). (Whitespace before the colon, RFC 9112 5.1, strict mode
    // refuses itself: no space or tab is a name byte there.)
    if (c.field_length_ == 0) return fail(parser, 400);
    // A trailer field: none of the headers looked at means anything there (RFC 9110 6.5.1:
    // no framing, no If-Modified-Since), and its name may lie in a read that is gone.
    if (c.headers_done_) {
      c.field_length_ = 0;
      return 0;
    }
    // field_kind_ is kOther here (on_header_value_complete and reset() leave it so). A name
    // of a length looked at is whole in field_ when not at field_at_.
    const char* const name = c.field_at_ ? c.field_at_ : c.field_;
    switch (c.field_length_) {
      case Conn::kHost.size():
        // Counted to 2 (as bad as more), so that no number of fields wraps the count.
        if (is_field<Conn::kHost.size()>(name, Conn::kHost) && c.seen_.hosts < 2) ++c.seen_.hosts;
        break;
      case Conn::kContentLength.size():
        if (is_field<Conn::kContentLength.size()>(name, Conn::kContentLength)) {
          c.field_kind_ = Conn::Field::kContentLength;
        }
        break;
      case Conn::kExpect.size():
        if (is_field<Conn::kExpect.size()>(name, Conn::kExpect)) {
          c.field_kind_ = Conn::Field::kExpect;
          c.token_.clear();
        }
        break;
      case Conn::kIms.size():
        static_assert(Conn::kIms.size() == Conn::kTransferEncoding.size());
        if (is_field<Conn::kIms.size()>(name, Conn::kIms)) {
          c.field_kind_ = Conn::Field::kIms;
          c.ims_.clear();  // a repeated header: the last one counts
        } else if (is_field<Conn::kTransferEncoding.size()>(name, Conn::kTransferEncoding)) {
          c.field_kind_ = Conn::Field::kTransferEncoding;
          c.token_.clear();
        }
        break;
    }
    c.field_length_ = 0;
    return 0;
  }

  // Whether the value bytes at `at` follow a line end (with only spaces and tabs between): the
  // value goes on after an obs-fold. A value that starts a read looks back at the last read's
  // tail_.
  static bool after_line_end(const Call& k, const char* at) {
    while (at > k.begin && is_space_or_tab(at[-1])) --at;
    return (at > k.begin ? at[-1] : k.conn.tail_) == '\n';
  }

  // The value of a field looked at (field_kind_ is not kOther): kept, or checked for a fold.
  [[gnu::noinline]] static int keep_value(llhttp_t* parser, const char* at, std::size_t length) {
    Call& k = call(parser);
    Conn& c = k.conn;
    switch (c.field_kind_) {
      case Conn::Field::kOther:
        break;
      case Conn::Field::kIms:
        c.ims_.append(at, length);
        break;
      case Conn::Field::kTransferEncoding:
        // llhttp 8.1 reads an obs-fold as part of the value and shows no sign of it; a fold in
        // a framing header is refused (RFC 9112 5.2 allows that), since a peer that does not
        // unfold reads another framing.
        if (after_line_end(k, at)) return fail(parser, 400);
        c.token_.append(at, length);
        break;
      case Conn::Field::kContentLength:  // llhttp checks the value itself
        if (after_line_end(k, at)) return fail(parser, 400);
        break;
      case Conn::Field::kExpect:
        c.token_.append(at, length);
        break;
    }
    return 0;
  }

  static int on_header_value(llhttp_t* parser, const char* at, std::size_t length) {
    Conn& c = conn(parser);
    if (c.ws_from_) {  // the value's first bytes: what llhttp discarded before them counts too
      c.header_bytes_ += static_cast<std::size_t>(at - c.ws_from_);
      c.ws_from_ = nullptr;
    }
    c.header_bytes_ += length;
    if (c.header_bytes_ > limits(parser).max_header_bytes) return fail(parser, 431);
    return c.field_kind_ == Conn::Field::kOther ? 0 : keep_value(parser, at, length);
  }

  // The end of a value kept: what it means for the checks of on_headers_complete.
  [[gnu::noinline]] static void note_value(Conn& c) {
    switch (c.field_kind_) {
      case Conn::Field::kOther:
      case Conn::Field::kIms:
      case Conn::Field::kContentLength:
        break;
      case Conn::Field::kTransferEncoding:
        // llhttp reads any list whose last coding is chunked as chunked ("identity, chunked",
        // "gzip, chunked"); we implement chunked alone. Two fields make a list, refused too.
        if (c.seen_.transfer_encodings < 2) ++c.seen_.transfer_encodings;  // as hosts
        c.seen_.chunked_only = equals_ignoring_case(c.token_.trimmed(), "chunked");
        break;
      case Conn::Field::kExpect:
        (equals_ignoring_case(c.token_.trimmed(), "100-continue") ? c.seen_.expect_continue
                                                                  : c.seen_.expect_other) = true;
        break;
    }
    c.field_kind_ = Conn::Field::kOther;
  }

  static int on_header_value_complete(llhttp_t* parser) {
    Conn& c = conn(parser);
    if (c.field_kind_ != Conn::Field::kOther) note_value(c);
    return 0;
  }

  // The checks of a request's head that llhttp 8.1 lacks (docs/http.md lists whose is which),
  // and the answer to an expectation; the common request (HTTP/1.1, one Host, no body, no
  // Expect) is told apart in on_headers_complete and needs none of it.
  [[gnu::noinline]] static int check_head(llhttp_t* parser) {
    Conn& c = conn(parser);
    // llhttp 8.1 takes any digit as a version; 1.2 up it refuses itself (505 by status_for).
    if (parser->http_major != 1) return fail(parser, 505);
    // RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
    if (c.seen_.hosts > 1 || (c.seen_.hosts == 0 && parser->http_minor == 1)) {
      return fail(parser, 400);
    }
    if (parser->flags & F_TRANSFER_ENCODING) {
      // HTTP/1.0 has no transfer codings: a 1.0 message with Transfer-Encoding is not framed
      // the way a 1.0 peer (or a proxy in front) would frame it (RFC 9112 6.1: treat as
      // faulty and close). llhttp 8.1 reads it as chunked.
      if (parser->http_minor == 0) return fail(parser, 400);
      if (c.seen_.transfer_encodings != 1 || !c.seen_.chunked_only) return fail(parser, 501);
    }
    // A declared length over the limit is refused before any of the body arrives.
    if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > limits(parser).max_body) {
      return fail(parser, 413);
    }
    // Expectations: 417 for one we do not know; for 100-continue, `100 Continue` when there is
    // a body to read. HTTP/1.0 requests' expectations are ignored (RFC 9110 10.1.1).
    if (parser->http_minor == 1 && (c.seen_.expect_continue || c.seen_.expect_other)) {
      if (c.seen_.expect_other) return fail(parser, 417);
      if ((parser->flags & F_CHUNKED) ||
          ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > 0)) {
        call(parser).out.bytes.append(kContinue);
      }
    }
    if (parser->flags & F_CHUNKED) {  // the first chunk-size line starts here
      c.chunk_lines_bytes_ = 0;
      c.in_chunk_line_ = true;
    }
    return 0;
  }

  static int on_headers_complete(llhttp_t* parser) {
    Conn& c = conn(parser);
    c.headers_done_ = true;
    const bool common = parser->http_major == 1 && parser->http_minor == 1 &&
                        c.seen_.hosts == 1 && !c.seen_.expect_continue && !c.seen_.expect_other &&
                        !(parser->flags & (F_TRANSFER_ENCODING | F_CONTENT_LENGTH));
    return common ? 0 : check_head(parser);
  }

  static int on_chunk_header(llhttp_t* parser) {
    Call& k = call(parser);
    Conn& c = k.conn;
    // parser->content_length is this chunk's size: refused before its bytes arrive.
    // body_bytes_ <= max_body here (on_body fails past it), so the subtraction cannot wrap.
    if (parser->content_length > limits(parser).max_body - c.body_bytes_) {
      return fail(parser, 413);
    }
    // The size line ended with the byte before the parser's position, which llhttp passes to
    // no callback of this kind: paused, it tells parse(), which measures the line and resumes.
    c.in_chunk_line_ = false;
    k.chunk_line_ended = true;
    return HPE_PAUSED;
  }

  static int on_chunk_complete(llhttp_t* parser) {
    // After the CRLF that ends a chunk's data the next size line starts; after the last chunk
    // (size 0, F_TRAILING) this comes once its trailers are read, and the request ends.
    if (!(parser->flags & F_TRAILING)) conn(parser).in_chunk_line_ = true;
    return 0;
  }

  // The line of a chunk of one byte, "1\r\n", is three bytes: chunks however small, their
  // sizes in plain hex, stay within the budget; extensions and leading zeros, which add line
  // bytes and no data, do not.
  static constexpr std::uint64_t kChunkLineBytesPerDataByte = 3;

  // Adds the bytes of the current chunk-size line that lie in this read before `to` (the byte
  // after its LF when `ended`, else the read's end) to the request's, and checks them against
  // their budget: kChunkLineBytesPerDataByte times the chunk data so far, plus
  // max_header_bytes (what a head may carry besides). A size line
  // holds no LF (strict llhttp refuses one, in a quoted extension too) and follows one (the
  // head's last, or a chunk's CRLF): in this read it starts after the last LF before its own,
  // or at `begin` when that LF lay in an earlier read (whose bytes of it were counted then).
  // Exact wherever reads end. False, with error_status_ 413, past the budget.
  static bool count_chunk_line(Conn& c, const Limits& limits, const char* begin, const char* to,
                               bool ended) {
    const char* const own_lf = ended ? to - 1 : to;
    const void* const lf = memrchr(begin, '\n', static_cast<std::size_t>(own_lf - begin));
    const char* const from = lf ? static_cast<const char*>(lf) + 1 : begin;
    c.chunk_lines_bytes_ += static_cast<std::uint64_t>(to - from);
    const std::uint64_t budget =
        kChunkLineBytesPerDataByte * c.body_bytes_ + limits.max_header_bytes;
    if (c.chunk_lines_bytes_ > budget) {
      c.error_status_ = 413;
      return false;
    }
    return true;
  }

  // A read ended with ws_from_ set: in a field name (ws_from_ is the read's end) or between a
  // colon and its value, whose bytes in this read count now, so that whitespace that never
  // ends is refused once past the limit. ws_from_ cannot outlive the read it points into.
  // False, with error_status_ 431, past max_header_bytes.
  [[gnu::noinline]] static bool count_ws_at_read_end(Conn& c, const Limits& limits,
                                                     const char* end) {
    if (c.ws_from_ < end) {
      c.header_bytes_ += static_cast<std::size_t>(end - c.ws_from_);
      c.ws_from_start_ = true;
    }
    c.ws_from_ = nullptr;
    if (c.header_bytes_ > limits.max_header_bytes) {
      c.error_status_ = 431;
      return false;
    }
    return true;
  }

  // The CRLF after a chunk's data is llhttp's to check (strict mode: third_party/system.BUILD).
  static int on_body(llhttp_t* parser, const char*, std::size_t length) {
    Conn& c = conn(parser);
    c.body_bytes_ += length;
    if (c.body_bytes_ > limits(parser).max_body) return fail(parser, 413);
    return 0;
  }

  // Answers a GET or HEAD for the file `rel` under the root. False if there is no such file
  // (the caller answers as without a root); true once a response was appended.
  static bool serve_file(Call& k, const std::string& rel, bool keep_alive, bool head) {
    const Responder& r = k.responder;
    const Conn& c = k.conn;
    struct stat st;
    FileFd fd(r.files_->open_file(rel.empty() ? std::string("index.html") : rel, &st));
    if (fd.get() < 0) return false;
    std::string& out = k.out.bytes;
    const std::string_view date(r.date_line_, r.date_length_);
    const std::time_t mtime = st.st_mtim.tv_sec;
    const std::time_t now = r.date_second_;  // the Date line's
    char lm_date[kHttpDateLength];
    // RFC 9110 8.8.2.1: never later than the response's Date. A file touched into the future
    // is sent as modified now, or a cache would keep that date and, with it, its copy. No
    // Last-Modified for a time outside the years an HTTP date can write.
    const bool has_lm = format_http_date(std::min(mtime, now), lm_date);
    const auto append_last_modified = [&] {
      if (!has_lm) return;
      out.append("Last-Modified: ");
      out.append(lm_date, kHttpDateLength);
      out.append("\r\n");
    };
    // Trimmed: llhttp passes the whitespace before the line end, which is no part of the
    // value (RFC 9110 5.5); an empty value (none, or an overflow) is no date.
    const std::string_view ims = c.ims_.trimmed();
    const std::time_t since = ims.empty() ? -1 : parse_http_date(ims);
    // A date later than our clock tells nothing (RFC 2616 14.25 called it invalid): ignored.
    // Compared with the mtime itself, so a future one makes no 304: the file may change again
    // before that time.
    if (since >= 0 && since <= now && since >= mtime) {
      out.append("HTTP/1.1 304 Not Modified\r\n");
      append_last_modified();
      out.append(date);
      out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
      return true;
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const bool body = !head && size > 0;
    const bool small = size <= kSmallFileBytes;
    FilePtr file(nullptr, std::fclose);
    if (body && !small) {
      file.reset(fdopen(fd.get(), "r"));
      if (!file) {
        respond(out, date, 500, reason(500), keep_alive, head);
        return true;
      }
      fd.release();  // the FILE's now
    }
    const std::size_t head_at = out.size();
    out.append("HTTP/1.1 200 OK\r\nContent-Length: ");
    append_number(out, size);
    out.append("\r\nContent-Type: ");
    out.append(content_type(rel.empty() ? std::string_view("index.html") : std::string_view(rel)));
    out.append("\r\n");
    append_last_modified();
    out.append(date);
    out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    if (file) {
      k.out.files.push_back({out.size(), file.get(), static_cast<std::size_t>(size)});
      file.release();  // the Output's now
      // The bound on file bodies reached: pause after this request (after_response()).
      if (k.out.files.size() + k.files_owed >= kMaxFileBodies) k.responder.paused_ = true;
      return true;
    }
    // A small body is read now (HEAD and an empty file have none): the fd closes at once.
    const bool whole = !body || append_file(fd.get(), static_cast<std::size_t>(size), out);
    if (!whole) {  // a complete 500 instead: the connection stays in step
      out.resize(head_at);
      respond(out, date, 500, reason(500), keep_alive, head);
    }
    return true;
  }

  // What on_message_complete returns once its response is appended: HPE_PAUSED after a
  // request that closes, or once the Output reaches a bound (parse() then reports paused(),
  // and the caller sends the Output before it parses on); else 0. While the parse runs,
  // paused_ set means the file bodies' bound is reached: one flag to test per request.
  static int after_response(Call& k, bool keep_alive) {
    Responder& r = k.responder;
    if (!keep_alive) {
      r.paused_ = false;  // a close, not a pause
      return HPE_PAUSED;
    }
    if (!r.paused_ && k.out.bytes.size() < kMaxOutputBytes) return 0;
    r.paused_ = true;
    return HPE_PAUSED;
  }

  // llhttp_should_keep_alive for a request, inlined (llhttp calls its own once more after this
  // callback): HTTP/1.1 keeps the connection unless `Connection: close`, HTTP/1.0 closes it
  // unless `Connection: keep-alive` (check_head refused every other version). A request's
  // framing never needs the peer's EOF (llhttp_message_needs_eof is 0 for requests).
  static bool keeps_alive(const llhttp_t& parser) {
    return parser.http_minor > 0 ? !(parser.flags & F_CONNECTION_CLOSE)
                                 : (parser.flags & F_CONNECTION_KEEP_ALIVE) != 0;
  }

  // The length of the target's path: up to its query or fragment. A byte loop: the targets
  // served most are a few bytes long ("/"), where find_first_of's set search costs more.
  static std::size_t path_length(std::string_view url) {
    std::size_t n = 0;
    while (n < url.size() && url[n] != '?' && url[n] != '#') ++n;
    return n;
  }

  static int on_message_complete(llhttp_t* parser) {
    Call& k = call(parser);
    const Responder& r = k.responder;
    k.conn.in_message_ = false;
    // An upgrade (Upgrade with Connection: upgrade, or CONNECT) is answered as a plain request
    // and closes: llhttp parses nothing after it, and the peer may switch protocols.
    const bool keep_alive = keeps_alive(*parser) && !parser->upgrade;
    const auto method = static_cast<llhttp_method_t>(parser->method);
    const std::string_view url = k.conn.url_at_
                                     ? std::string_view(k.conn.url_at_, k.conn.url_length_)
                                     : std::string_view(k.conn.url_);
    std::string_view path = url.substr(0, path_length(url));
    std::string_view after_path = url.substr(path.size());
    const bool head = method == HTTP_HEAD;
    const std::string_view date(r.date_line_, r.date_length_);
    std::string& out = k.out.bytes;
    if (path.empty() || path[0] != '/') [[unlikely]] {
      // RFC 9110 9.3.7: OPTIONS * asks about the server as a whole (a ping): no content, and
      // the methods its resources take. (Another method with "*" is refused as before.)
      if (method == HTTP_OPTIONS && url == "*") {
        respond(out, date, 200, {}, keep_alive, false, "Allow: GET, HEAD\r\n");
        return after_response(k, keep_alive);
      }
      absolute_form(url, &path, &after_path);
    }
    if (!r.pages_.empty()) {
      if (const Page* page = find_page(r.pages_, path)) {
        serve_page(*page, after_path, method, keep_alive, head, date, out);
        return after_response(k, keep_alive);
      }
    }
    if (r.files_) {
      std::string rel;
      const int status = root_relative(path, &rel);
      if (status) {  // 400 (a malformed target) closes, as llhttp's 400s do; 404 does not
        const bool keep = keep_alive && status != 400;
        respond(out, date, status, reason(status), keep, head);
        return after_response(k, keep);
      }
      if (method != HTTP_GET && !head) {
        respond(out, date, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
        return after_response(k, keep_alive);
      }
      if (serve_file(k, rel, keep_alive, head)) return after_response(k, keep_alive);
      // No file: "/" without index.html answers as without a root, the rest is 404.
    }
    if (path != "/") {
      respond(out, date, 404, "Not Found", keep_alive, head);
    } else if (method == HTTP_GET && keep_alive) {
      out.append(r.hello_);  // the common case, formatted once a second
    } else if (method == HTTP_GET || head) {
      respond(out, date, 200, kHello, keep_alive, head);
    } else {
      respond(out, date, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
    }
    return after_response(k, keep_alive);
  }

  static llhttp_settings_t make_settings() {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = on_message_begin;
    s.on_url = on_url;
    s.on_header_field = on_header_field;
    s.on_header_field_complete = on_header_field_complete;
    s.on_header_value = on_header_value;
    s.on_header_value_complete = on_header_value_complete;
    s.on_headers_complete = on_headers_complete;
    s.on_chunk_header = on_chunk_header;
    s.on_chunk_complete = on_chunk_complete;
    s.on_body = on_body;
    s.on_message_complete = on_message_complete;
    return s;
  }

  // One set for every Responder, made on first use (so no static initialisation order
  // matters to a Responder made during another file's).
  static const llhttp_settings_t* settings() {
    static const llhttp_settings_t s = make_settings();
    return &s;
  }
};

void Conn::reset(const llhttp_settings_t* settings) {
  llhttp_init(&parser_, HTTP_REQUEST, settings);
  error_status_ = 0;
  in_message_ = false;
  headers_done_ = false;
  finished_ = false;
  in_chunk_line_ = false;
  ws_from_ = nullptr;
  ws_from_start_ = false;
  tail_ = 0;
  url_at_ = nullptr;
  field_at_ = nullptr;
  field_kind_ = Field::kOther;
}

Responder::Responder(const Limits& limits, const StaticFiles* files, std::span<const Page> pages)
    : limits_(limits), files_(files), pages_(pages), settings_(Callbacks::settings()) {
  refresh_date();
}

void Responder::refresh_date(std::time_t now) {
  if (now == date_second_) return;
  constexpr std::string_view kName = "Date: ";
  static_assert(sizeof date_line_ >= kName.size() + kHttpDateLength + 2);
  char date[kHttpDateLength];
  date_length_ = 0;  // no Date header for a clock outside the years an HTTP date can write
  if (format_http_date(now, date)) {
    std::memcpy(date_line_, kName.data(), kName.size());
    std::memcpy(date_line_ + kName.size(), date, kHttpDateLength);
    std::memcpy(date_line_ + kName.size() + kHttpDateLength, "\r\n", 2);
    date_length_ = kName.size() + kHttpDateLength + 2;
  }
  date_second_ = now;
  hello_.clear();
  respond(hello_, std::string_view(date_line_, date_length_), 200, kHello, true, false);
}

// Out of line: a read that ends inside a request is rare, and assign() brings its allocation
// and exception paths. Throws bad_alloc as any std::string (responder.h, Errors).
[[gnu::noinline]] void Responder::keep_url(Conn& c) {
  c.url_.assign(c.url_at_, c.url_length_);
  c.url_at_ = nullptr;
}

ReadResult Responder::parse(Conn* conn, std::string_view bytes, Output* out,
                             unsigned files_owed) {
  Conn& c = conn ? *conn : scratch_;
  // The scratch state is re-initialised only when the read before left it mid-request or
  // stopped (an error, a pause): after reads that ended between requests, llhttp is already
  // at the start of a message and the Conn's flags are clear. Dirty until this parse says
  // otherwise, which one that throws (out of memory, from a callback through llhttp, built
  // with -fexceptions for it: third_party/system.BUILD) never does.
  if (!conn) {
    if (scratch_dirty_) scratch_.reset(settings_);
    scratch_dirty_ = true;
  } else if (c.ws_from_start_) {  // (only a Conn of its own is ever mid-head at a read's start)
    c.ws_from_ = bytes.data();
    c.ws_from_start_ = false;
  }
  const char* const end = bytes.data() + bytes.size();
  Call call{*this, c, *out, bytes.data(), files_owed};
  paused_ = false;
  c.parser_.data = &call;
  c.head_began_ = false;
  llhttp_errno_t err = llhttp_execute(&c.parser_, bytes.data(), bytes.size());
  // Paused at the end of a chunk-size line (on_chunk_header): measured, then parsed on.
  while (err == HPE_PAUSED && call.chunk_line_ended) {
    call.chunk_line_ended = false;
    const char* const next = llhttp_get_error_pos(&c.parser_);
    llhttp_resume(&c.parser_);
    if (!Callbacks::count_chunk_line(c, limits_, bytes.data(), next, true)) {
      err = HPE_USER;
      break;
    }
    err = llhttp_execute(&c.parser_, next, static_cast<std::size_t>(end - next));
  }
  // The read ended inside a chunk-size line: its bytes here count now, so that one that never
  // ends is refused once past its budget. (F_CHUNKED: the flag is this request's, not left
  // over from one whose body llhttp skipped.)
  if (err == HPE_OK && c.in_chunk_line_ && c.in_message_ && (c.parser_.flags & F_CHUNKED) &&
      !Callbacks::count_chunk_line(c, limits_, bytes.data(), end, false)) {
    err = HPE_USER;
  }
  if (err == HPE_OK && c.ws_from_ && !Callbacks::count_ws_at_read_end(c, limits_, end)) {
    err = HPE_USER;
  }
  if (!conn) scratch_dirty_ = err != HPE_OK || c.in_message_;
  if (err == HPE_OK) {
    // The request goes on in the next read: its target so far cannot stay where it lies.
    if (c.in_message_ && c.url_at_) keep_url(c);
    const bool in_head = c.in_head();
    if (in_head) {  // what the next read needs of this one
      const char* p = end;
      while (p > bytes.data() && is_space_or_tab(p[-1])) --p;
      if (p > bytes.data()) c.tail_ = p[-1];  // for after_line_end()
      if (c.field_length_ && c.field_at_) {  // a field name goes on in the next read
        Callbacks::keep_field(c, 0, c.field_at_, c.field_length_);
        c.field_at_ = nullptr;
      }
    }
    return {.finish = false,
            .in_head = in_head,
            .request_began = c.in_message_ && c.head_began_,
            .keep_state = c.in_message_};
  }
  if (paused_) {
    // Stopped right after a request (llhttp's error_pos: the byte after it). Resumed, the
    // parser takes the next input from there, should the caller keep this Conn.
    const char* const next = llhttp_get_error_pos(&c.parser_);
    llhttp_resume(&c.parser_);
    paused_ = true;
    unparsed_ = static_cast<std::size_t>(end - next);
    return {.finish = false, .in_head = false, .request_began = false, .keep_state = false};
  }
  if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
    // The responses owed for the requests before the bad one are in `out`; the error's goes
    // last. error_status_: a limit of ours (a callback's error; llhttp's code depends on which).
    const int status =
        c.error_status_ ? c.error_status_ : status_for(err, llhttp_get_error_reason(&c.parser_));
    // A response to HEAD has no content (RFC 9110 9.3.2). llhttp keeps the last request's
    // method until it parses the next one's, and the only error it raises before that, or
    // for a method not followed by a space ("HEADX"), is HPE_INVALID_METHOD: parser_.method
    // is this request's for any other error (ours all come later too). Not on_url: llhttp
    // checks a target's bytes before passing them, so that would depend on where reads end.
    const bool head = err != HPE_INVALID_METHOD && c.parser_.method == HTTP_HEAD;
    respond(out->bytes, std::string_view(date_line_, date_length_), status, reason(status), false,
            head);
  }
  // HPE_PAUSED: a request without keep-alive was answered; HPE_PAUSED_UPGRADE: an upgrade
  // (not supported) was answered as a plain request. Either way the connection ends here.
  finished_on_error_ = err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE;
  c.finished_ = true;
  return {.finish = true, .in_head = false, .request_began = false, .keep_state = true};
}

}  // namespace tools::http
