// tools/http/responder.h: the socket-free HTTP/1.x core of tools/http_server. Given the bytes
// of one read of a connection, a Responder parses them with llhttp and appends every response
// owed for the requests they complete, in request order, to an Output; the caller sends the
// Output and acts on the ReadResult (close, deadlines, keep the parse state). The server
// and bench/http_path_bench run this same code.
//
// What is answered: `GET /` (and HEAD) "Hello World!" as text/plain, other methods on "/" 405,
// other paths 404; with StaticFiles, GET and HEAD of the files under the root (see
// tools/http_server.cc). A target in absolute-form (`http://host/path?q`) is read as its path
// (RFC 9112 3.2.2); `OPTIONS *` gets 200 with `Allow: GET, HEAD` and no content. Keep-alive
// follows llhttp (HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `Connection:
// keep-alive`), except that an upgrade request (Upgrade, CONNECT) is answered as a plain one and
// closes; nothing after a request that closes is parsed.
// What one parse() answers is bounded (kMaxFileBodies, kMaxOutputBytes): past a bound it stops
// after a request and says how much of the input it left for later (Responder::paused()), so
// that a client that pipelines requests and reads nothing cannot make the server hold without
// end. Bad input is answered, then the connection finishes: 400 malformed, 414 / 431 / 413 past a
// Limits field, 501 a transfer coding other than chunked, 505 an HTTP major version other than
// 1, 417 an expectation other than 100-continue. A request that expects 100-continue and has a
// body within the limits gets `100 Continue` before its final response (413 instead, at once,
// when its declared body is over the limit). docs/http.md lists which checks llhttp 8.1 makes
// and which this file adds.
//
// Threads: a Responder belongs to the thread that made it (one per shard); nothing in it is
// shared or locked. A Conn is used by one thread at a time, with that thread's Responder.
// Ownership: the caller owns its Conns and Outputs; the FILE*s an Output's files hold belong to
// whoever holds the Output (see FileBody).
// Blocking: a file body of at most kSmallFileBytes is read (pread) on the calling thread.
// Errors: bad input is not an error of a call but a response plus ReadResult::finish. Out of
// memory while appending to a std::string throws std::bad_alloc, as any std::string does;
// from parse() (through llhttp, built to let it pass), it leaves the connection's state with
// nothing to go on from: the caller drops the connection, and closes the FILE*s in `out`.
#ifndef TOOLS_HTTP_RESPONDER_H_
#define TOOLS_HTTP_RESPONDER_H_

#include <llhttp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tools::http {

class StaticFiles;
struct Callbacks;  // the llhttp callbacks (responder.cc)

// Limits on one request, checked as its bytes arrive (before they are buffered or counted
// further). A request past one is answered with the status named and the connection finishes.
struct Limits {
  std::size_t max_url = 8 * 1024;            // request target bytes (held in memory): 414
  // Header and trailer field lines without their line ends (names, colons, the whitespace
  // before values, values; an empty value's line end too, where llhttp reports it): 431.
  // Also the allowance of a chunked body's chunk-size lines beyond three bytes per byte of
  // chunk data before them (docs/http.md): 413.
  std::size_t max_header_bytes = 16 * 1024;
  unsigned max_headers = 100;                // header fields: 431
  std::uint64_t max_body = 1024 * 1024;      // body bytes, declared or chunked (discarded): 413
};

// The engine's packet payload (BUFFER_FILE_READ_SIZE in engine/libsock.h, which this
// socket-free library does not include; tools/http_server.cc checks that the two agree).
inline constexpr std::size_t kPacketPayload = 16 * 1024;
// A file body of at most this many bytes is read into the response at once and its fd closed;
// a larger one is owed as a FileBody, its file open until sendfile has sent it all. One
// payload: reading it holds the thread on the page cache (or the disk) no longer than the
// sendfile of the same bytes would, and what it copies is what a packet holds.
inline constexpr std::size_t kSmallFileBytes = kPacketPayload;
// File bodies a connection may be owed at once (each holds an fd): parse() stops after the
// request that brings them to this many. Each is over kSmallFileBytes, so 16 of them are at
// least 256 KiB of file on its way to a pipelining client before the server waits for its
// queue to empty (tools/http_server.cc), while the fds one connection costs stay at 17 however
// deep it pipelines.
inline constexpr unsigned kMaxFileBodies = 16;
// Response bytes parse() appends before it stops (after the response that reaches them):
// otherwise one 16 KiB read of pipelined GETs of small files would be owed over 500 responses
// of up to kSmallFileBytes each at once, memory the engine's high watermark only sees after
// the fact. Four payloads: ordinary pipelines (16 "Hello World!" requests, about 2 KiB) never
// meet it.
inline constexpr std::size_t kMaxOutputBytes = 4 * kPacketPayload;
static_assert(kSmallFileBytes < kMaxOutputBytes,
              "responses to several small files fit in one parse before it stops");

// One connection's parse state between two reads. A connection needs one of its own only
// while a read has ended part-way through a request (or it is finishing); between requests it
// has none and Responder::parse() starts from the Responder's scratch state.
// Copyable: a copy parses on from where the original stopped (llhttp keeps no pointer into the
// input between llhttp_execute calls, and parse() points the parser at its context on entry).
class Conn {
 public:
  Conn(const Conn&) = default;

  // An error or a closing request was answered: the connection is closing, and what it sends
  // from now on must not be parsed.
  bool finished() const { return finished_; }
  // The last read ended inside a request's line or headers (the header deadline applies).
  bool in_head() const { return in_message_ && !headers_done_; }
  // The last read ended inside a request's head that began in that read (a pipelining client's
  // next request): the header deadline starts again from that head's first byte.
  bool head_began() const { return in_head() && head_began_; }

 private:
  friend class Responder;
  friend struct Callbacks;

  // The request headers looked at, by name (lower case; compared case-insensitively). The
  // field name is kept up to the longest of them. If-Modified-Since's value is kept up to
  // kMaxImsValue bytes (an IMF-fixdate has 29; a longer value is not a date and is ignored);
  // Transfer-Encoding's and Expect's up to kMaxTokenValue (past it, the value is none we
  // implement); Host is only counted, and Content-Length only checked for an obs-fold.
  static constexpr std::string_view kIms = "if-modified-since";
  static constexpr std::string_view kTransferEncoding = "transfer-encoding";
  static constexpr std::string_view kContentLength = "content-length";
  static constexpr std::string_view kExpect = "expect";
  static constexpr std::string_view kHost = "host";
  static constexpr std::size_t kMaxFieldKept =
      std::max({kIms.size(), kTransferEncoding.size(), kContentLength.size(), kExpect.size(),
                kHost.size()});
  static constexpr std::size_t kMaxImsValue = 40;
  static constexpr std::size_t kMaxTokenValue = 16;  // "100-continue", "chunked", with spaces
  enum class Field : unsigned char { kOther, kIms, kTransferEncoding, kContentLength, kExpect };
  // A value kept up to N bytes; `overflow` once a byte other than a space or tab came past
  // them (llhttp passes trailing whitespace, which is no part of a value: RFC 9110 5.5).
  template <std::size_t N>
  struct Kept {
    static_assert(N <= 255, "length is an unsigned char");
    char bytes[N] = {};
    unsigned char length = 0;
    bool overflow = false;

    void clear() { length = 0, overflow = false; }
    void append(const char* at, std::size_t n) {
      for (std::size_t i = 0; i < n && !overflow; ++i) {
        if (length < N) {
          bytes[length++] = at[i];
        } else if (at[i] != ' ' && at[i] != '\t') {
          overflow = true;
        }
      }
    }
    // The value without leading and trailing spaces and tabs; empty after an overflow.
    std::string_view trimmed() const {
      if (overflow) return {};
      std::string_view v(bytes, length);
      const std::size_t first = v.find_first_not_of(" \t");
      if (first == std::string_view::npos) return {};
      return v.substr(first, v.find_last_not_of(" \t") + 1 - first);
    }
  };

  Conn() = default;  // only the Responder's scratch state starts from nothing
  // Ready for a connection's next request.
  void reset(const llhttp_settings_t* settings);

  llhttp_t parser_{};
  // The request target so far: where it lies in the read being parsed (url_at_) while it came
  // in one piece, as field names are; one that a read ended in, or that outlives the read its
  // request is answered in, is copied to url_ (url_at_ nullptr).
  const char* url_at_ = nullptr;
  std::size_t url_length_ = 0;
  std::string url_;
  std::size_t header_bytes_ = 0;  // field line bytes of this request's headers (Limits)
  std::uint64_t body_bytes_ = 0;  // body bytes of this request (chunked bodies have no length)
  // The bytes of this request's chunk-size lines so far (sizes, extensions, line ends), which
  // llhttp bounds neither in an extension nor in a size's leading zeros; set from 0 by
  // on_headers_complete of a chunked request. Their budget: 3 * body_bytes_ + max_header_bytes.
  std::uint64_t chunk_lines_bytes_ = 0;
  unsigned headers_ = 0;          // header fields of this request
  int error_status_ = 0;          // set by a callback that stops the parser with a status
  bool in_message_ = false;       // between on_message_begin and on_message_complete
  bool headers_done_ = false;     // on_headers_complete of the current request has run
  bool head_began_ = false;       // on_message_begin ran during the last read
  bool finished_ = false;
  // The parser is inside a chunk-size line: from the head's end or a chunk's CRLF to the next
  // on_chunk_header (which pauses the parser, so that parse() can measure the line).
  bool in_chunk_line_ = false;
  // The current field's name and length (an empty name is refused), and which of the headers
  // above it is (trailer fields are none of them). A head's field name is read where it lies
  // in the read being parsed (field_at_) while it came in one piece; one that a read ended in
  // is kept in field_ (its first kMaxFieldKept bytes; field_at_ nullptr) for the next read to
  // go on. A trailer's name is never read back.
  const char* field_at_ = nullptr;
  char field_[kMaxFieldKept] = {};
  std::size_t field_length_ = 0;
  Field field_kind_ = Field::kOther;
  // Where the bytes between the current field's name and its value begin (its colon) in the
  // read being parsed; nullptr once they are counted. llhttp passes them to no callback (the
  // whitespace before a value; an empty value's line end and obs-folds too), so they counted
  // toward no limit and could go on for ever; on_header_value counts them up to its value.
  // A read that ends among them counts its part, and ws_from_start_ says they go on from the
  // next read's first byte (parse() points ws_from_ there).
  const char* ws_from_ = nullptr;
  bool ws_from_start_ = false;
  // The last byte of the previous read other than a space or tab, when that read ended inside
  // a head: tells whether a value that starts this read follows a line end (an obs-fold).
  char tail_ = 0;
  // Per request, cleared together by on_message_begin (one store): what the header checks of
  // on_headers_complete need.
  struct Seen {
    unsigned char hosts = 0;               // Host fields (2 is as bad as more)
    unsigned char transfer_encodings = 0;  // Transfer-Encoding fields (likewise)
    bool chunked_only = false;     // the last Transfer-Encoding value was exactly "chunked"
    bool expect_continue = false;  // an Expect value was 100-continue
    bool expect_other = false;     // an Expect value was anything else
  };
  Seen seen_;
  Kept<kMaxImsValue> ims_;        // the last If-Modified-Since value
  Kept<kMaxTokenValue> token_;    // the current Transfer-Encoding or Expect value
};

// A file body owed (one over kSmallFileBytes): sent (with sendfile) after Output::bytes[0, at)
// and before the rest. `file` is open at offset 0 and belongs to whoever holds the Output, who
// must hand it to sock_write2(.file) (which takes it even on error) or fclose it.
struct FileBody {
  std::size_t at;
  FILE* file;
  std::size_t size;  // bytes to send, the file's size when it was opened
};

// What the requests parsed by one parse() are owed, in order: `bytes`, with the file bodies
// inserted at their offsets (ascending). The caller sends it and clears it before the next
// parse(): the bounds count what it holds.
struct Output {
  std::string bytes;
  std::vector<FileBody> files;
};

// What the caller must do after a parse().
struct ReadResult {
  // The connection ends: close it once the Output is sent, and parse nothing more from it
  // (drain and discard what it still sends). Its Conn, kept, reports finished().
  bool finish = false;
  // The read ended inside a request's line or headers: the header deadline should run (and
  // stop once a read ends elsewhere). Always false with `finish`.
  bool in_head = false;
  // The read ended inside a request (its head, body or trailers) that began in this read, so
  // that request's deadlines start now (a pipelining client's reads may each end inside a new
  // request: each has the whole deadline). Always false with `finish`; without in_head the
  // request's head is complete and its body is owed.
  bool request_began = false;
  // The parse state must outlive this read: the read ended inside a request, or the connection
  // is finishing. For parse(nullptr, ...), copy scratch() into a Conn of the connection's own;
  // false for a Conn of its own: the connection is between requests and its Conn may be freed.
  bool keep_state = false;
};
// A pause at a bound is Responder::paused(), not a field here: unpacking a fifth flag from
// every parse's result cost a keep-alive request about 15 instructions (bench/callgrind.sh).

// A page made on request (tools/http_server --metrics: /metrics and /status): GET and HEAD of
// `path` answer 200 with the body `make` appends for the query string (the target after '?',
// without a fragment; "" if none), with `content_type`; other methods 405, and 500 when make
// returns false. Pages come before files: a page's path hides the file of the same name.
struct Page {
  std::string_view path;
  std::string_view content_type;
  bool (*make)(std::string_view query, std::string* body);
};

class Responder {
 public:
  // `files`: the root to serve files from, or nullptr to serve none; `pages`: the pages to
  // serve; both must outlive the Responder. The Date line is current from here on (see
  // refresh_date()).
  Responder(const Limits& limits, const StaticFiles* files, std::span<const Page> pages = {});
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  // Keeps the Date line (and the cached keep-alive "Hello World!" response that holds it)
  // current for `now` (wall-clock seconds; a reactor has them in last_tick): a compare, and
  // formatting once a second. Call once before each batch of parse() calls (the server: once
  // per on_data).
  void refresh_date(std::time_t now = std::time(nullptr));

  // Parses `bytes`, the next input of a connection, and appends to `out` every response owed
  // for the requests they complete, in order, stopping after a request that closes, at bad
  // input (whose status is the last response appended) or at a bound (paused()).
  // `conn`: the connection's own state, never finished(); or nullptr if it has none, when the
  // read is parsed from a fresh scratch() state (fresh: initialised, or left between requests
  // by the previous read). `files_owed`: file bodies of earlier Outputs the connection has
  // not been sent yet (an upper bound will do); parsing stops after the request whose file
  // body brings them, with this parse's, to kMaxFileBodies (one more, when the connection
  // was owed that many already).
  ReadResult parse(Conn* conn, std::string_view bytes, Output* out, unsigned files_owed = 0);

  // The state the last parse(nullptr, ...) left (see ReadResult::keep_state).
  const Conn& scratch() const { return scratch_; }

  // Whether the last parse() stopped after a request, between requests, at a bound: the
  // Output holds kMaxFileBodies file bodies with those the connection was owed already, or
  // kMaxOutputBytes bytes or more. Its input's last unparsed() bytes (maybe none) are the
  // connection's next input, to parse before anything read after them: send the Output
  // first, and let what the connection is owed go out, or the bounds hold nothing back. Its
  // ReadResult then has every flag false.
  bool paused() const { return paused_; }
  std::size_t unparsed() const { return unparsed_; }

  // After a parse() whose ReadResult says `finish`: whether the connection ends on an error
  // answered before its request's end (400, 413, 414, 431, ...), so that the client may still
  // be sending it, not on a request without keep-alive. Such a close should linger
  // (sock_close_lingering): input arriving after a plain close(2) is met with a reset, which
  // the client may see before the answer.
  bool finished_on_error() const { return finished_on_error_; }

 private:
  friend struct Callbacks;

  static void keep_url(Conn& c);

  const Limits limits_;
  const StaticFiles* const files_;
  const std::span<const Page> pages_;
  const llhttp_settings_t* const settings_;
  Conn scratch_;
  bool scratch_dirty_ = true;  // scratch_ is not at the start of a message with clear flags
  bool paused_ = false;        // see paused()
  std::size_t unparsed_ = 0;   // see paused()
  bool finished_on_error_ = false;  // see finished_on_error()
  std::time_t date_second_ = -1;
  char date_line_[64] = {};  // "Date: ...\r\n" for date_second_
  std::size_t date_length_ = 0;
  std::string hello_;  // the whole keep-alive response to GET /, with the Date line above
};

}  // namespace tools::http

#endif  // TOOLS_HTTP_RESPONDER_H_
