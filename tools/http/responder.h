// tools/http/responder.h: the socket-free HTTP/1.x core of tools/http_server. Given the bytes
// of one read of a connection, a Responder parses them with llhttp and appends every response
// owed for the requests they complete, in request order, to an Output; the caller sends the
// Output and acts on the ReadResult (close, header deadline, keep the parse state). The server
// and bench/http_path_bench run this same code.
//
// What is answered: `GET /` (and HEAD) "Hello World!" as text/plain, other methods on "/" 405,
// other paths 404; with StaticFiles, GET and HEAD of the files under the root (see
// tools/http_server.cc). Keep-alive follows llhttp (HTTP/1.1 unless `Connection: close`,
// HTTP/1.0 only with `Connection: keep-alive`); nothing after a request that closes is parsed.
// Bad input is answered, then the connection finishes: 400 malformed, 414 / 431 / 413 past a
// Limits field, 501 a transfer coding other than chunked.
//
// Threads: a Responder belongs to the thread that made it (one per shard); nothing in it is
// shared or locked. A Conn is used by one thread at a time, with that thread's Responder.
// Ownership: the caller owns its Conns and Outputs; the FILE*s an Output's files hold belong to
// whoever holds the Output (see FileBody).
// Errors: bad input is not an error of a call but a response plus ReadResult::finish. Out of
// memory while appending to a std::string throws std::bad_alloc, as any std::string does.
#ifndef TOOLS_HTTP_RESPONDER_H_
#define TOOLS_HTTP_RESPONDER_H_

#include <llhttp.h>

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
  std::size_t max_header_bytes = 16 * 1024;  // header field names and values together: 431
  unsigned max_headers = 100;                // header fields: 431
  std::uint64_t max_body = 1024 * 1024;      // body bytes, declared or chunked (discarded): 413
};

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

 private:
  friend class Responder;
  friend struct Callbacks;

  // If-Modified-Since is the only request header kept; its value is kept up to kMaxImsValue
  // bytes (an IMF-fixdate has 29; a longer value is not a date and is ignored).
  static constexpr std::string_view kIms = "if-modified-since";
  static constexpr std::size_t kMaxImsValue = 40;

  Conn() = default;  // only the Responder's scratch state starts from nothing
  // Ready for a connection's next request.
  void reset(const llhttp_settings_t* settings);

  llhttp_t parser_{};
  std::string url_;               // the request target so far (on_url may come in pieces)
  std::size_t header_bytes_ = 0;  // field and value bytes of this request's headers
  std::uint64_t body_bytes_ = 0;  // body bytes of this request (chunked bodies have no length)
  unsigned headers_ = 0;          // header fields of this request
  int error_status_ = 0;          // set by a callback that stops the parser with a status
  bool in_message_ = false;       // between on_message_begin and on_message_complete
  bool headers_done_ = false;     // on_headers_complete of the current request has run
  bool finished_ = false;
  // If-Modified-Since capture: the current field's name (its first kIms.size() bytes) and
  // length, whether the current value is that header's, and the value (if it fits).
  char field_[kIms.size()] = {};
  std::size_t field_length_ = 0;
  bool ims_field_ = false;
  bool ims_overflow_ = false;
  unsigned char ims_length_ = 0;
  char ims_[kMaxImsValue] = {};
  static_assert(kMaxImsValue <= 255, "ims_length_ is an unsigned char");
};

// A file body owed: sent (with sendfile) after Output::bytes[0, at) and before the rest.
// `file` is open at offset 0 and belongs to whoever holds the Output, who must hand it to
// sock_write2(.file) (which takes it even on error) or fclose it.
struct FileBody {
  std::size_t at;
  FILE* file;
  std::size_t size;  // bytes to send, the file's size when it was opened
};

// What the requests of one read are owed, in order: `bytes`, with the file bodies inserted at
// their offsets (ascending). The caller sends it and clears it before the next parse().
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
  // The parse state must outlive this read: the read ended inside a request, or the connection
  // is finishing. For parse(nullptr, ...), copy scratch() into a Conn of the connection's own;
  // false for a Conn of its own: the connection is between requests and its Conn may be freed.
  bool keep_state = false;
};

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
  // for the requests they complete, in order, stopping after a request that closes or at bad
  // input (whose status is the last response appended).
  // `conn`: the connection's own state, never finished(); or nullptr if it has none, when the
  // read is parsed from a fresh scratch() state (fresh: initialised, or left between requests
  // by the previous read).
  ReadResult parse(Conn* conn, std::string_view bytes, Output* out);

  // The state the last parse(nullptr, ...) left (see ReadResult::keep_state).
  const Conn& scratch() const { return scratch_; }

 private:
  friend struct Callbacks;

  const Limits limits_;
  const StaticFiles* const files_;
  const std::span<const Page> pages_;
  const llhttp_settings_t* const settings_;
  Conn scratch_;
  bool scratch_dirty_ = true;  // scratch_ is not at the start of a message with clear flags
  std::time_t date_second_ = -1;
  char date_line_[64] = {};  // "Date: ...\r\n" for date_second_
  std::size_t date_length_ = 0;
  std::string hello_;  // the whole keep-alive response to GET /, with the Date line above
};

}  // namespace tools::http

#endif  // TOOLS_HTTP_RESPONDER_H_
