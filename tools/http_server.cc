// http_server: an HTTP/1.1 (and 1.0) server on the sharded server, parsing with llhttp. One
// shard (a thread with its own epoll set) per CPU by default; Ctrl-C (SIGINT) or SIGTERM stops
// it gracefully.
//   http_server [--port P] [--threads N] ...   (default port 3000; --help lists the flags)
//               [--root DIR]                  (static files from DIR)
//               [--header-timeout-ms MS]      (the whole-header deadline, default 10000; 0: none)
//
// What it serves (issue 4, section 1): `GET /` (and HEAD) answers "Hello World!" as
// text/plain; other methods on / are 405. Without --root every other path is 404.
//
// --root DIR: static files from DIR for GET and HEAD (other methods: 405). "/" serves
// DIR/index.html when it exists (else "Hello World!" as above). Content-Type comes from the
// extension, Last-Modified from st_mtime, and If-Modified-Since at or after it gives 304. A
// missing file, a directory or anything but a regular file is 404. No path escapes DIR: the
// target is percent-decoded, a ".." segment is 404 (a NUL or a bad escape 400), the file is
// opened with openat relative to an O_PATH fd of DIR with O_NOFOLLOW, and the path the kernel
// opened (/proc/self/fd) must lie under DIR's realpath. The body goes out with
// sock_write2(.file) (sendfile), queued right after the response's head; everything runs on
// the shard thread (open and fstat only; the file's bytes are never read here).
//
// Connections: HTTP/1.1 keeps the connection open unless the request says `Connection: close`;
// HTTP/1.0 closes after the response unless it asks for `Connection: keep-alive`. Pipelining:
// every response owed for the requests found in one read is queued before the next read (and
// so before on_data returns), in request order, so they leave together in the shard's flush.
//
// Bad input gets a status and a close, never a crash: 400 for a malformed request, 414 for a
// request target over kMaxUrl bytes, 431 for headers over kMaxHeaderBytes bytes or
// kMaxHeaders fields, 413 for a body over kMaxBody bytes, 501 for a transfer coding other than
// chunked. The error response is the last thing written; the connection then closes once it is
// sent.
//
// Per-connection state (a Conn: the llhttp parser and the request target so far) lives in a
// table of the shard that owns the connection, indexed by fd, and exists only while the
// connection is part-way through a request: a read that holds whole requests is parsed with
// the shard's scratch Conn (freshly initialised), and only a read that ends inside a request
// moves that state to a Conn of its own, freed again once a read ends between requests (or in
// on_close). So an idle keep-alive connection costs one null pointer here, and the common case
// allocates nothing. on_close runs on the owning shard after close(2): another shard may
// already have a new connection on the same fd number, which is why the table is per shard
// and not global.
#include <fcntl.h>
#include <llhttp.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tools/flags.h"

namespace {

// Limits on one request (fixed for now; flags are future work).
constexpr std::size_t kMaxUrl = 8 * 1024;
constexpr std::size_t kMaxHeaderBytes = 16 * 1024;  // field names and values together
constexpr unsigned kMaxHeaders = 100;
constexpr std::uint64_t kMaxBody = 1024 * 1024;

// The whole-header deadline (slowloris): a request's head must be complete this long after
// the first read that ended inside it, or the connection closes. --header-timeout-ms sets it.
unsigned g_header_timeout_ms = 10 * 1000;

// Input discarded per callback on a connection that is closing after an error or a close.
constexpr std::size_t kMaxDrain = 64 * 1024;

constexpr std::string_view kHello = "Hello World!";

// --root: an O_PATH fd of the directory and its realpath with a trailing '/' (empty without).
int g_root_fd = -1;
std::string g_root_path;

// If-Modified-Since: the only request header kept, at most this many bytes of its value (an
// IMF-fixdate has 29; a longer value is ignored).
constexpr std::size_t kMaxImsValue = 40;
constexpr std::string_view kIms = "if-modified-since";

// One connection's parse state, on the shard that owns it.
struct Conn {
  llhttp_t parser;
  std::string url;               // the request target so far (on_url may come in pieces)
  std::size_t header_bytes = 0;  // field and value bytes of this request's headers
  std::uint64_t body_bytes = 0;  // body bytes of this request (chunked bodies have no length)
  unsigned headers = 0;          // header fields of this request
  int error_status = 0;          // set by a callback that stops the parser with a status
  bool in_message = false;       // between on_message_begin and on_message_complete
  bool headers_done = false;     // on_headers_complete of the current request has run
  bool deadline_set = false;     // fd has the header deadline running (sock_set_deadline)
  bool finished = false;         // an error or a close was answered: input is discarded
  // If-Modified-Since capture: the current field's name (its first kIms.size() bytes) and
  // length, whether the current value is that header's, and the value (if it fits).
  char field[kIms.size()] = {};
  std::size_t field_length = 0;
  bool ims_field = false;
  bool ims_overflow = false;
  unsigned char ims_length = 0;
  char ims[kMaxImsValue] = {};
};

// A file body queued in the shard's output between out[0, at) and out[at, ...).
struct PendingFile {
  std::size_t at;
  FILE* file;
  std::size_t size;
};

// The fd number limit, from main before the server starts (threads see it after creation).
std::size_t g_max_fds = 0;

// A shard's per-fd table and output buffer; thread_local, so one per shard thread.
struct Shard {
  Conn** conns = nullptr;  // calloc'd: the pages of fd numbers never used stay untouched
  std::string out;         // the responses owed for the current read, written in one go
  Conn scratch;            // parses each read of a connection that has no Conn of its own
  // File bodies owed for the current read: each goes between two parts of `out`, in order.
  std::vector<PendingFile> files;
  std::time_t date_second = -1;
  char date_line[64] = {};  // "Date: ...\r\n" for date_second
  std::size_t date_length = 0;
  std::string hello;  // the whole keep-alive response to GET /, with the Date line above

  ~Shard() {
    if (!conns) return;
    for (std::size_t fd = 0; fd < g_max_fds; ++fd) delete conns[fd];  // none left after stop
    std::free(conns);
  }
};
thread_local Shard t_shard;

// The shard's table, created on first use; nullptr if there is no memory for it.
Conn** shard_table() {
  if (!t_shard.conns) {
    t_shard.conns = static_cast<Conn**>(std::calloc(g_max_fds, sizeof(Conn*)));
  }
  return t_shard.conns;
}

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
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    default:
      return "Error";
  }
}

// Appends one whole response to `out` (with the shard's Date line).
void respond(std::string& out, int status, std::string_view body, bool keep_alive, bool head,
             std::string_view extra_headers = {}) {
  char number[24];
  out.append("HTTP/1.1 ");
  out.append(number, std::to_chars(number, number + sizeof number, status).ptr);
  out.append(" ");
  out.append(reason(status));
  out.append("\r\nContent-Length: ");
  out.append(number, std::to_chars(number, number + sizeof number, body.size()).ptr);
  out.append("\r\nContent-Type: text/plain\r\n");
  out.append(t_shard.date_line, t_shard.date_length);
  out.append(extra_headers);
  out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  if (!head) out.append(body);
}

// Keeps the shard's Date line current: it changes once a second, so it is formatted once.
void refresh_date() {
  const std::time_t now = std::time(nullptr);
  if (now == t_shard.date_second) return;
  std::tm tm;
  gmtime_r(&now, &tm);
  t_shard.date_length = std::strftime(t_shard.date_line, sizeof t_shard.date_line,
                                      "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  t_shard.date_second = now;
  t_shard.hello.clear();
  respond(t_shard.hello, 200, kHello, true, false);
}

Conn* conn_of(llhttp_t* parser) { return static_cast<Conn*>(parser->data); }

// Stops the parser with `status` as the answer (llhttp_execute returns an error: HPE_USER from
// a data callback, HPE_CB_* from the others).
int fail(llhttp_t* parser, int status) {
  conn_of(parser)->error_status = status;
  return -1;
}

int on_message_begin(llhttp_t* parser) {
  Conn* c = conn_of(parser);
  c->in_message = true;
  c->headers_done = false;
  c->url.clear();
  c->header_bytes = 0;
  c->body_bytes = 0;
  c->headers = 0;
  c->field_length = 0;
  c->ims_field = false;
  c->ims_overflow = false;
  c->ims_length = 0;
  return 0;
}

int on_url(llhttp_t* parser, const char* at, std::size_t length) {
  Conn* c = conn_of(parser);
  if (c->url.size() + length > kMaxUrl) return fail(parser, 414);
  c->url.append(at, length);
  return 0;
}

int on_header_field(llhttp_t* parser, const char* at, std::size_t length) {
  Conn* c = conn_of(parser);
  c->header_bytes += length;
  if (c->header_bytes > kMaxHeaderBytes) return fail(parser, 431);
  if (c->field_length < sizeof c->field) {
    std::memcpy(c->field + c->field_length, at,
                std::min(length, sizeof c->field - c->field_length));
  }
  c->field_length += length;
  return 0;
}

int on_header_field_complete(llhttp_t* parser) {
  Conn* c = conn_of(parser);
  if (++c->headers > kMaxHeaders) return fail(parser, 431);
  c->ims_field =
      c->field_length == kIms.size() && strncasecmp(c->field, kIms.data(), kIms.size()) == 0;
  if (c->ims_field) {  // a repeated header: the last one counts
    c->ims_length = 0;
    c->ims_overflow = false;
  }
  c->field_length = 0;
  return 0;
}

int on_header_value(llhttp_t* parser, const char* at, std::size_t length) {
  Conn* c = conn_of(parser);
  c->header_bytes += length;
  if (c->header_bytes > kMaxHeaderBytes) return fail(parser, 431);
  if (c->ims_field && !c->ims_overflow) {
    if (length > sizeof c->ims - c->ims_length) {
      c->ims_overflow = true;
    } else {
      std::memcpy(c->ims + c->ims_length, at, length);
      c->ims_length = static_cast<unsigned char>(c->ims_length + length);
    }
  }
  return 0;
}

int on_header_value_complete(llhttp_t* parser) {
  conn_of(parser)->ims_field = false;
  return 0;
}

int on_headers_complete(llhttp_t* parser) {
  conn_of(parser)->headers_done = true;
  // A declared length over the limit is refused before any of the body arrives.
  if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > kMaxBody) {
    return fail(parser, 413);
  }
  return 0;
}

int on_chunk_header(llhttp_t* parser) {
  // parser->content_length is this chunk's size: refused before its bytes arrive.
  Conn* c = conn_of(parser);
  if (parser->content_length > kMaxBody - c->body_bytes) return fail(parser, 413);
  return 0;
}

int on_body(llhttp_t* parser, const char*, std::size_t length) {
  Conn* c = conn_of(parser);
  c->body_bytes += length;
  if (c->body_bytes > kMaxBody) return fail(parser, 413);
  return 0;
}

// Content-Type for a file name's extension.
std::string_view content_type(std::string_view name) {
  const std::size_t slash = name.rfind('/');
  const std::size_t dot = name.rfind('.');
  if (dot == std::string_view::npos || (slash != std::string_view::npos && dot < slash)) {
    return "application/octet-stream";
  }
  const std::string_view ext = name.substr(dot + 1);
  static constexpr std::pair<std::string_view, std::string_view> kTypes[] = {
      {"html", "text/html; charset=utf-8"},
      {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},
      {"js", "text/javascript; charset=utf-8"},
      {"json", "application/json"},
      {"txt", "text/plain; charset=utf-8"},
      {"png", "image/png"},
      {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},
      {"gif", "image/gif"},
      {"svg", "image/svg+xml"},
      {"ico", "image/x-icon"},
      {"wasm", "application/wasm"},
  };
  for (const auto& [e, type] : kTypes) {
    if (ext.size() == e.size() && strncasecmp(ext.data(), e.data(), e.size()) == 0) return type;
  }
  return "application/octet-stream";
}

int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

// The path of a request target under the root, percent-decoded and without its leading '/'
// ("" for "/"). 0 with *rel set, or the status to answer: 400 for a bad escape, a NUL or a
// target that is not an origin path; 404 for a ".." segment.
int root_relative(std::string_view path, std::string* rel) {
  if (path.empty() || path[0] != '/') return 400;
  rel->clear();
  for (std::size_t i = 1; i < path.size(); ++i) {
    char ch = path[i];
    if (ch == '%') {
      const int hi = i + 2 < path.size() ? hex_value(path[i + 1]) : -1;
      const int lo = hi >= 0 ? hex_value(path[i + 2]) : -1;
      if (lo < 0) return 400;
      ch = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (ch == '\0') return 400;
    rel->push_back(ch);
  }
  // Any ".." segment, wherever it is, is refused (also "\\.." for good measure: not a
  // separator on Linux, but no file needs it).
  for (std::size_t from = 0; from <= rel->size();) {
    std::size_t end = rel->find('/', from);
    if (end == std::string::npos) end = rel->size();
    if (std::string_view(*rel).substr(from, end - from) == "..") return 404;
    from = end + 1;
  }
  return 0;
}

// Opens `rel` under the root as a regular file: the fd (and *st), or -1 if there is none
// there (missing, a directory, a symlink as the last component, or outside the root).
int open_under_root(const std::string& rel, struct stat* st) {
  const char* name = rel.c_str();
  while (*name == '/') ++name;  // "//x": still relative to the root
  if (!*name) return -1;
  const int fd = openat(g_root_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return -1;
  if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    return -1;
  }
  // An intermediate symlink may lead out of the root: the path the kernel opened must lie
  // under the root's realpath.
  char link[32];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char real[4096];
  const ssize_t n = readlink(link, real, sizeof real);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof real ||
      std::string_view(real, static_cast<std::size_t>(n)).substr(0, g_root_path.size()) !=
          g_root_path) {
    close(fd);
    return -1;
  }
  return fd;
}

// Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"); -1 if it is not one.
std::time_t parse_http_date(std::string_view value) {
  if (value.size() != 29) return -1;
  char text[30];
  std::memcpy(text, value.data(), 29);
  text[29] = '\0';
  std::tm tm = {};
  const char* end = strptime(text, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (!end || *end) return -1;
  return timegm(&tm);
}

void append_number(std::string& out, std::uint64_t n) {
  char number[24];
  out.append(number, std::to_chars(number, number + sizeof number, n).ptr);
}

// Answers a GET or HEAD for a file under --root. False if there is no such file (the caller
// answers as without --root); true once a response was queued.
bool serve_file(Conn* c, const std::string& rel, bool keep_alive, bool head) {
  struct stat st;
  const int fd = open_under_root(rel.empty() ? std::string("index.html") : rel, &st);
  if (fd < 0) return false;
  std::string& out = t_shard.out;
  char last_modified[64];
  std::tm tm;
  const std::time_t mtime = st.st_mtim.tv_sec;
  gmtime_r(&mtime, &tm);
  const std::size_t lm_length = std::strftime(last_modified, sizeof last_modified,
                                              "Last-Modified: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  const std::time_t since = c->ims_length && !c->ims_overflow
                                ? parse_http_date(std::string_view(c->ims, c->ims_length))
                                : -1;
  if (since >= 0 && since >= mtime) {
    close(fd);
    out.append("HTTP/1.1 304 Not Modified\r\n");
    out.append(last_modified, lm_length);
    out.append(t_shard.date_line, t_shard.date_length);
    out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    return true;
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  FILE* file = nullptr;
  if (!head && size > 0 && !(file = fdopen(fd, "r"))) {
    close(fd);
    respond(out, 500, reason(500), keep_alive, head);
    return true;
  }
  if (!file) close(fd);
  out.append("HTTP/1.1 200 OK\r\nContent-Length: ");
  append_number(out, size);
  out.append("\r\nContent-Type: ");
  out.append(content_type(rel.empty() ? std::string_view("index.html") : std::string_view(rel)));
  out.append("\r\n");
  out.append(last_modified, lm_length);
  out.append(t_shard.date_line, t_shard.date_length);
  out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  if (file) t_shard.files.push_back({out.size(), file, static_cast<std::size_t>(size)});
  return true;
}

int on_message_complete(llhttp_t* parser) {
  Conn* c = conn_of(parser);
  c->in_message = false;
  const bool keep_alive = llhttp_should_keep_alive(parser) != 0;
  const auto method = static_cast<llhttp_method_t>(parser->method);
  const std::string_view url = c->url;
  const std::string_view path = url.substr(0, url.find_first_of("?#"));
  const bool head = method == HTTP_HEAD;
  if (g_root_fd >= 0) {
    std::string rel;
    const int status = root_relative(path, &rel);
    if (status) {  // 400 (a malformed target) closes, as llhttp's 400s do; 404 does not
      const bool keep = keep_alive && status != 400;
      respond(t_shard.out, status, reason(status), keep, head);
      return keep ? 0 : HPE_PAUSED;
    }
    if (method != HTTP_GET && !head) {
      respond(t_shard.out, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
      return keep_alive ? 0 : HPE_PAUSED;
    }
    if (serve_file(c, rel, keep_alive, head)) return keep_alive ? 0 : HPE_PAUSED;
    // No file: "/" without index.html answers as without --root, the rest is 404.
  }
  if (path != "/") {
    respond(t_shard.out, 404, "Not Found", keep_alive, head);
  } else if (method == HTTP_GET && keep_alive) {
    t_shard.out.append(t_shard.hello);  // the common case, formatted once a second
  } else if (method == HTTP_GET || head) {
    respond(t_shard.out, 200, kHello, keep_alive, head);
  } else {
    respond(t_shard.out, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
  }
  // Nothing after a closing request is parsed: pausing makes llhttp_execute return here.
  return keep_alive ? 0 : HPE_PAUSED;
}

llhttp_settings_t make_settings() {
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
  s.on_body = on_body;
  s.on_message_complete = on_message_complete;
  return s;
}
const llhttp_settings_t g_settings = make_settings();

// The status for a parser error llhttp found itself.
int status_for(llhttp_errno_t err) {
  switch (err) {
    case HPE_INVALID_TRANSFER_ENCODING:
      return 501;  // a coding other than chunked
    default:
      return 400;
  }
}

// Writes what the shard's output buffer holds to fd. False if it could not be queued (the
// connection was then force-closed: fd and its Conn are gone).
// File bodies go out between the parts of the buffer, each with sock_write2(.file) (sendfile),
// which takes the FILE* whatever happens.
bool write_out(struct Reactor* r, int fd) {
  std::string& out = t_shard.out;
  std::vector<PendingFile>& files = t_shard.files;
  if (out.empty()) return true;
  ssize_t rc = 0;
  std::size_t from = 0;
  for (const PendingFile& f : files) {
    if (rc >= 0 && f.at > from) rc = sock_write(fd, out.data() + from, f.at - from);
    from = f.at;
    if (rc >= 0) {
      rc = sock_write2(.fd = fd, .buffer = f.file, .length = f.size, .file = 1);
    } else {
      std::fclose(f.file);
    }
  }
  files.clear();
  if (rc >= 0 && out.size() > from) rc = sock_write(fd, out.data() + from, out.size() - from);
  out.clear();
  if (rc < 0) {
    // A lost response would pair every later request with the wrong answer: give up.
    sock_force_close(r, fd);
    return false;
  }
  return true;
}

// Discards what fd still has to read, then closes it once its queue is sent. The input is
// drained first so that the close is not turned into a reset by unread data (which could
// destroy the response before the client reads it).
// At most kMaxDrain bytes per callback, so that a peer that keeps sending cannot hold the
// shard.
void finish(struct Reactor* r, int fd, Conn* c) {
  c->finished = true;
  char buf[4096];
  ssize_t n;
  std::size_t drained = 0;
  while (drained < kMaxDrain && (n = sock_read(fd, buf, sizeof buf)) > 0) {
    drained += static_cast<std::size_t>(n);
  }
  // n < 0: EOF or an error, and the library closes fd itself; closing it here could reach a
  // new connection on the same number.
  if (drained >= kMaxDrain || n == 0) sock_close(r, fd);
}

// Copies a Conn (the scratch one) into fd's own; nullptr without memory. The parser's copy is
// valid: llhttp keeps no pointer into the data between calls of llhttp_execute (it resets
// them on entry), only `data`, which is pointed at the copy.
Conn* keep(Conn** table, int fd, const Conn& state) {
  Conn* c = new (std::nothrow) Conn(state);
  if (!c) return nullptr;
  c->parser.data = c;
  table[fd] = c;
  return c;
}

void on_open(struct Reactor*, int fd) {
  Conn** table = shard_table();
  if (!table) return;  // on_data refuses the connection
  delete table[fd];    // on_close frees it; this only guards against a missed close
  table[fd] = nullptr;
}

void on_close(struct Reactor*, int fd) {
  Conn** table = t_shard.conns;
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds) return;
  delete table[fd];
  table[fd] = nullptr;
}

// Runs on the thread of the shard that owns fd, whenever fd has input.
void on_data(struct Reactor* r, int fd) {
  Conn** table = shard_table();
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds) {
    sock_force_close(r, fd);
    return;
  }
  refresh_date();
  char buf[16 * 1024];
  ssize_t n;  // 0: drained for now; -1: the peer left (the library closes the fd)
  std::size_t discarded = 0;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    Conn* c = table[fd];
    const bool scratch = c == nullptr;
    if (scratch) {
      c = &t_shard.scratch;
      llhttp_init(&c->parser, HTTP_REQUEST, &g_settings);
      c->parser.data = c;
      c->error_status = 0;
      c->in_message = false;
      c->headers_done = false;
      c->deadline_set = false;
      c->finished = false;
    } else if (c->finished) {
      // Closing: the input is not parsed any more, and no more than kMaxDrain of it is read
      // per callback (what is left unread makes the close a reset; the response has had its
      // chance by then).
      discarded += static_cast<std::size_t>(n);
      if (discarded >= kMaxDrain) return;
      continue;
    }
    const llhttp_errno_t err = llhttp_execute(&c->parser, buf, static_cast<std::size_t>(n));
    if (err == HPE_OK) {
      if (!write_out(r, fd)) return;
      // The header deadline runs while a read has ended inside a request's head.
      const bool in_head = c->in_message && !c->headers_done;
      if (in_head != c->deadline_set && g_header_timeout_ms) {
        sock_set_deadline(fd, in_head ? g_header_timeout_ms : 0);
        c->deadline_set = in_head;
      }
      if (scratch && c->in_message) {
        // The read ended inside a request: its parse state outlives this read.
        if (!(c = keep(table, fd, *c))) {
          sock_force_close(r, fd);
          return;
        }
      } else if (!scratch && !c->in_message) {
        delete c;  // between requests again: the next read starts from scratch
        table[fd] = nullptr;
      }
      continue;
    }
    if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
      // The responses owed for the requests before the bad one, then the error's.
      // error_status: a limit of ours (a callback's error; llhttp's code depends on which).
      const int status = c->error_status ? c->error_status : status_for(err);
      respond(t_shard.out, status, reason(status), false, false);
    }
    // HPE_PAUSED: a request without keep-alive was answered; HPE_PAUSED_UPGRADE: an upgrade
    // (not supported) was answered as a plain request. Either way the connection ends here.
    if (!write_out(r, fd)) return;
    // A Conn of its own, so that later reads see `finished` until the close.
    if (scratch && !(c = keep(table, fd, *c))) {
      sock_force_close(r, fd);
      return;
    }
    finish(r, fd, c);
    return;
  }
}

// Takes this tool's own flags out of argv (tools::run_server knows the shared ones). Returns
// false, with a message, for a bad value.
bool take_own_flags(int* argc, char** argv) {
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strcmp(argv[i], "--root") == 0) {
      if (i + 1 >= *argc || !*argv[i + 1]) {
        std::fprintf(stderr, "http_server: --root needs a directory\n");
        return false;
      }
      char* real = realpath(argv[i + 1], nullptr);
      const int fd = real ? open(real, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
      if (fd < 0) {
        std::fprintf(stderr, "http_server: --root %s: %s\n", argv[i + 1], std::strerror(errno));
        std::free(real);
        return false;
      }
      if (g_root_fd >= 0) close(g_root_fd);
      g_root_fd = fd;
      g_root_path = real;
      if (g_root_path.back() != '/') g_root_path += '/';
      std::free(real);
      ++i;
      continue;
    }
    if (std::strcmp(argv[i], "--header-timeout-ms") == 0) {
      char* end = nullptr;
      errno = 0;
      const long ms = i + 1 < *argc ? std::strtol(argv[i + 1], &end, 10) : -1;
      if (i + 1 >= *argc || errno || end == argv[i + 1] || *end || ms < 0 || ms > 3600000) {
        std::fprintf(stderr, "http_server: --header-timeout-ms needs a number of ms (0: none)\n");
        return false;
      }
      g_header_timeout_ms = static_cast<unsigned>(ms);
      ++i;
      continue;
    }
    argv[kept++] = argv[i];
  }
  *argc = kept;
  argv[kept] = nullptr;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (!take_own_flags(&argc, argv)) return 2;
  // Raises the fd limit to the hard limit (as the server would): one fd per connection.
  const ssize_t fds = sock_max_capacity();
  if (fds <= 0) {
    std::fprintf(stderr, "http_server: cannot size the connection table: %s\n",
                 std::strerror(errno));
    return 1;
  }
  g_max_fds = static_cast<std::size_t>(fds);
  SockServerSettings settings{};
  settings.on_open = on_open;
  settings.on_data = on_data;
  settings.on_close = on_close;
  return tools::run_server(
      argc, argv,
      {.name = "http_server",
       .summary = "An HTTP/1.1 server: GET / answers \"Hello World!\"; keep-alive, pipelining; "
                  "static files with --root.",
       .default_port = "3000",
       .listening = "http_server listening on http://0.0.0.0:%d/",
       .extra_usage = "  --root DIR              serve the files under DIR (GET, HEAD; \"/\": "
                      "DIR/index.html)\n"
                      "  --header-timeout-ms MS  whole request header within MS (default 10000; "
                      "0: none)\n"},
      settings);
}
