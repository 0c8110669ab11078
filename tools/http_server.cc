// http_server: an HTTP/1.1 (and 1.0) server on the sharded server, parsing with llhttp. One
// shard (a thread with its own epoll set) per CPU by default; Ctrl-C (SIGINT) or SIGTERM stops
// it gracefully.
//   http_server [--port P] [--threads N] ...   (default port 3000; --help lists the flags)
//               [--idle-timeout-ms MS]        (keep-alive idle timeout, default 30000; 0: none)
//               [--root DIR]                  (static files from DIR)
//               [--header-timeout-ms MS]      (the whole-header deadline, default 10000; 0: none)
//               [--request-timeout-ms MS]     (the whole-request deadline, head and body,
//                                              default 60000; 0: none)
//               [--max-url BYTES] [--max-header-bytes BYTES] [--max-headers N]
//               [--max-body BYTES]            (limits on one request; defaults in --help)
//               [--metrics]                   (GET /metrics and /status: the pool profiler)
//               [--tls-cert PEM --tls-key PEM] (HTTPS on the same port: TLS 1.2/1.3, ALPN
//                                              http/1.1, tickets; engine/tls/sock_tls.h)
//
// This file is the socket side; the HTTP itself (parsing, limits, responses, static files) is
// the socket-free library in tools/http/, which bench/http_path_bench measures. Per read,
// on_data hands the bytes to its thread's http::Responder (in ThreadState), sends the Output
// it fills, and acts on the ReadResult: close, the header and request deadlines, and keeping
// or freeing the parse state.
//
// What it serves (issue 4, section 1): `GET /` (and HEAD) answers "Hello World!" as
// text/plain; other methods on / are 405. Without --root every other path is 404. A target in
// absolute-form (`GET http://host/path HTTP/1.1`, scheme http or https) is served as its path,
// "/" for none (RFC 9112 3.2.2); `OPTIONS *` answers 200 with `Allow: GET, HEAD`.
//
// --root DIR: static files from DIR for GET and HEAD (other methods: 405). "/" serves
// DIR/index.html when it exists (else "Hello World!" as above). Content-Type comes from the
// extension, Last-Modified from st_mtime (the response's Date instead when the mtime lies in the
// future: RFC 9110 8.8.2.1), and If-Modified-Since at or after the mtime, and not later than the
// server's clock, gives 304 (a later one is ignored). A missing file, a directory or anything but a
// regular file is 404. No path escapes DIR: the target is percent-decoded, a ".." segment is 404 (a
// NUL or a bad escape 400), the file is opened with openat relative to an O_PATH fd of DIR with
// O_NOFOLLOW (so a symlink as the last component is 404 wherever it points, inside DIR too), and
// the path the kernel opened (/proc/self/fd) must lie under DIR's realpath. A body of at most
// http::kSmallFileBytes (16 KiB) is read into the response (pread) and the file closed at once; a
// larger one goes out with sock_write2(.file) (sendfile), queued right after the response's head,
// and holds its file open until sent. Everything runs on the shard thread (a file that reads
// shorter than its fstat size, having shrunk meanwhile, is answered 500).
//
// --metrics: `GET /metrics` answers the packet pool profiler's metrics of every shard in
// Prometheus text format 0.0.4 (`?name=PREFIX` keeps the families whose names start with
// PREFIX), and `GET /status` a small HTML page: a table per shard and the JSON export (top
// connections by queued memory, histograms while profiling is on). Both are made on the
// thread of the shard the request reached, from relaxed snapshots of every shard's counters
// (engine/metrics.h); without the flag both paths are 404 as before. LIBSOCK_PROFILE=1
// switches the histograms on.
//
// Connections: HTTP/1.1 keeps the connection open unless the request says `Connection: close`;
// HTTP/1.0 closes after the response unless it asks for `Connection: keep-alive`. A
// keep-alive connection with no reads and no write progress for --idle-timeout-ms closes (the
// engine's idle timer). Pipelining: the responses owed for the requests found in one read are
// queued before the next read, in request order, so they leave together in the shard's flush;
// up to the Responder's bounds: http::kMaxFileBodies file bodies owed (fds held) per
// connection, http::kMaxOutputBytes of responses per parse. Past one, the rest of the read is
// held back (at most one read, 16 KiB, outside the engine's memory budget) and nothing more is
// read until the connection's queue has drained; with nothing queued it parses on at once
// (serve_after_pause()).
//
// Bad input gets a status and a close, never a crash: 400 for a malformed request, 414 for a
// request target over --max-url bytes, 431 for headers over --max-header-bytes bytes or
// --max-headers fields, 413 for a body over --max-body bytes, 501 for a transfer coding other
// than chunked, 505 for an HTTP version other than 1.x, 417 for an expectation other than
// 100-continue (docs/http.md has every check). The error response is the last thing written;
// the connection then closes once it is sent. `Expect: 100-continue` with a body within the
// limits gets `100 Continue` at once.
//
// Per-connection state (an http::Conn: the llhttp parser and the request target so far; input
// held back) lives in a table of the thread of the shard that owns the connection (its
// ThreadState), indexed by fd, and exists only while the connection is part-way through a
// request (or finishing, or holding input back): a read that holds whole requests is parsed
// from the Responder's scratch state, and only a read that ends inside a request copies that
// state to a Conn of its own, freed again once a read ends between requests (or in on_close);
// a connection whose last request came whole in one read shares the thread's one finished mark
// until it closes. So an idle keep-alive connection costs two null pointers (and a time stamp,
// meaningless between requests) here, and neither the common keep-alive case nor a short
// connection allocates anything. on_close runs on the owning shard after close(2): another
// shard may already have a new connection on the same fd number, which is why the table is per
// shard thread and not global.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "shards/server.h"
#include "tools/http/responder.h"
#include "tools/http/static_files.h"
#include "tools/server_main.h"

namespace {

namespace http = tools::http;

// The whole-header deadline (slowloris): a request's head must be complete this long after
// the read it began in, or the connection closes; each pipelined request's head has a deadline
// of its own. --header-timeout-ms sets it.
constexpr unsigned kDefaultHeaderTimeoutMs = 10 * 1000;
unsigned g_header_timeout_ms = kDefaultHeaderTimeoutMs;
// The whole-request deadline (a slow body, R-U-D-Y: the idle timer never fires on a client
// that sends a byte every few seconds): a request's head, body and trailers must be complete
// this long after the read it began in, or the connection closes; each pipelined request has
// its own. It must let a legitimate upload of the largest body finish: 60 s takes the default
// --max-body (1 MiB) from a client that sends 17.5 KB/s (140 kbit/s, a poor mobile link) or
// more; a larger --max-body needs a longer one for the same rate. --request-timeout-ms sets it.
constexpr unsigned kDefaultRequestTimeoutMs = 60 * 1000;
unsigned g_request_timeout_ms = kDefaultRequestTimeoutMs;

// Input discarded per callback on a connection that is closing after an error or a close.
constexpr std::size_t kMaxDrain = 64 * 1024;

// responder.h cannot include libsock.h: its copy of the packet payload must match.
static_assert(http::kPacketPayload == BUFFER_FILE_READ_SIZE);

// Set by main (the flags during run_server's parse) before the server starts, read-only once
// shard threads exist (which see them after their creation): the limits (--max-*), the root
// (--root; null without) and the fd number limit.
http::Limits g_limits;
std::unique_ptr<http::StaticFiles> g_files;
std::size_t g_max_fds = 0;
bool g_metrics = false;  // --metrics

// What one shard thread keeps for its connections: the per-fd table, the HTTP core and the
// output of the current read. thread_local, so one per shard thread, made on its first
// callback.
bool metrics_page(std::string_view query, std::string* body);
bool status_page(std::string_view query, std::string* body);

// The pages run inside llhttp's C callbacks, which no exception may cross: out of memory
// answers 500 instead.
template <bool (*kMake)(std::string_view, std::string*)>
bool without_exceptions(std::string_view query, std::string* body) {
  try {
    return kMake(query, body);
  } catch (const std::bad_alloc&) {
    return false;
  }
}

constexpr http::Page kPages[] = {
    {"/metrics", "text/plain; version=0.0.4; charset=utf-8", without_exceptions<metrics_page>},
    {"/status", "text/html; charset=utf-8", without_exceptions<status_page>},
};

// One connection's entry in its thread's table (null pointers: between requests, nothing
// held).
struct Entry {
  // Its parse state (see the top), or the thread's shared finishing mark.
  http::Conn* conn;
  // Set while a pause of the Responder waits for the connection's queue to drain (serve()):
  // the input not parsed yet (maybe none), parsed before anything read after it.
  std::string* held;
  // When the read that began the current request ended inside its head (monotonic_ms()), if
  // its header deadline was the earlier one: what update_deadline() re-arms the request
  // deadline from once the head is complete. Meaningless between requests.
  std::int64_t began_ms;
};

struct ThreadState {
  Entry* conns = nullptr;  // calloc'd: the pages of fd numbers never used stay untouched
  http::Responder responder{g_limits, g_files.get(),
                            g_metrics ? std::span<const http::Page>(kPages)
                                      : std::span<const http::Page>()};
  struct Reactor* reactor = nullptr;  // the shard's, for the pages (set by on_data)
  http::Output out;  // what the current read owes, written in one go
  // What a connection that is closing after its last request holds in the table instead of a
  // Conn of its own: it needs no parse state, only the mark that what it still sends is
  // discarded (finished()), so one copy per thread serves them all and a short connection
  // allocates nothing. Made at the first such close.
  std::unique_ptr<http::Conn> finishing;
  // Where finish() reads what it discards: no array on its stack, so no stack-protector
  // check per call (a short connection calls it once: bench/callgrind.sh, close16).
  char discard[4096];

  // Frees the Conn of one table entry, unless it is the shared mark.
  void release_conn(Entry& e) {
    if (e.conn != finishing.get()) delete e.conn;
    e.conn = nullptr;
  }

  // Frees all that one table entry holds.
  void release(Entry& e) {
    release_conn(e);
    delete e.held;
    e.held = nullptr;
  }

  ~ThreadState() {
    if (!conns) return;
    for (std::size_t fd = 0; fd < g_max_fds; ++fd) release(conns[fd]);  // none left after stop
    std::free(conns);
  }
};
thread_local ThreadState t_state;

// The thread's state, made at its first use: nullptr if there was no memory to make it (the
// Responder's first Date line allocates), so that the bad_alloc does not leave the callback
// into the engine; the next use tries again.
[[gnu::always_inline]] inline ThreadState* thread_state() noexcept {
  try {
    return &t_state;
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

// The whole metrics text of the server of the calling shard, grown until it fits.
bool server_metrics(int format, const std::string& prefix, std::string* text) {
  SockServer* server = sock_server_of(t_state.reactor);
  std::size_t size = 64 * 1024;
  for (;;) {
    text->resize(size);
    const ssize_t n = sock_server_metrics(server, format, prefix.c_str(), text->data(), size);
    if (n < 0) return false;
    if (static_cast<std::size_t>(n) < size) {
      text->resize(static_cast<std::size_t>(n));
      return true;
    }
    size = static_cast<std::size_t>(n) + 1;
  }
}

// /metrics[?name=PREFIX]: the value of the first name= parameter, used as it is (metric
// names need no escaping; anything else simply matches no family).
bool metrics_page(std::string_view query, std::string* body) {
  std::string prefix;
  while (!query.empty()) {
    const std::string_view param = query.substr(0, query.find('&'));
    if (param.starts_with("name=")) {
      prefix = param.substr(5);
      break;
    }
    query.remove_prefix(std::min(query.size(), param.size() + 1));
  }
  if (!server_metrics(SOCK_METRICS_PROMETHEUS, prefix, body)) return false;
  // TLS's families (handshakes, failures by reason, handshake time): process-wide, so after
  // the shards' labelled series.
  std::string tls(static_cast<std::size_t>(sock_tls_metrics(nullptr, 0)) + 64, '\0');
  const ssize_t n = sock_tls_metrics(tls.data(), tls.size());
  if (n < 0 || static_cast<std::size_t>(n) >= tls.size()) return false;
  tls.resize(static_cast<std::size_t>(n));
  std::string_view rest = tls;
  while (!rest.empty()) {  // the same name= filter, one family (HELP, TYPE, samples) at a time
    std::size_t end = rest.find("\n# HELP ");
    end = end == std::string_view::npos ? rest.size() : end + 1;
    const std::string_view family = rest.substr(0, end);
    if (family.substr(7).starts_with(prefix)) body->append(family);
    rest.remove_prefix(end);
  }
  return true;
}

bool status_page(std::string_view, std::string* body) {
  SockServer* server = sock_server_of(t_state.reactor);
  std::string json;
  if (!server_metrics(SOCK_METRICS_JSON, "", &json)) return false;
  *body = "<!doctype html><title>http_server: packet pools</title>"
          "<h1>Packet pools</h1><table border=1 cellpadding=4><tr><th>shard<th>connections"
          "<th>outstanding packets<th>high water<th>chunk bytes<th>hit %<th>queued bytes";
  for (int i = 0; i < sock_server_shard_count(server); ++i) {
    SockStats s{};
    s.size = sizeof s;
    if (sock_stats(sock_server_shard(server, i), &s) < 0) continue;
    char row[256];
    std::snprintf(row, sizeof row,
                  "<tr><td>%d<td>%llu<td>%llu<td>%llu<td>%llu<td>%.1f<td>%llu", i,
                  static_cast<unsigned long long>(s.connections),
                  static_cast<unsigned long long>(s.outstanding),
                  static_cast<unsigned long long>(s.high_water),
                  static_cast<unsigned long long>(s.chunk_bytes),
                  s.checkouts ? 100.0 * static_cast<double>(s.hits) / static_cast<double>(s.checkouts) : 100.0,
                  static_cast<unsigned long long>(s.queued_bytes));
    body->append(row);
  }
  // The JSON holds numbers and fixed names only: nothing to escape for HTML.
  body->append("</table><p><a href=\"/metrics\">/metrics</a> (Prometheus)<h2>JSON</h2><pre>");
  body->append(json);
  body->append("</pre>\n");
  return true;
}

// The thread's table, created on first use; nullptr if there is no memory for it.
Entry* conn_table(ThreadState& state) {
  if (!state.conns) state.conns = static_cast<Entry*>(std::calloc(g_max_fds, sizeof(Entry)));
  return state.conns;
}

// The clock of the engine's timers (CLOCK_MONOTONIC; the reactor's cached reading of it is not
// public), in ms: a vDSO call, no system call. Read only for a request whose head spans reads
// while the header deadline is the earlier, never for one that comes whole.
std::int64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

// fd's one deadline (the engine keeps one per fd: sock_set_deadline) after a read that began
// or ended inside a request (serve(); `was_in_head`: it began inside that request's head).
// While a request is incomplete it is the earlier of the header deadline (while in its head)
// and the request deadline, each counted from the read that held the request's first byte;
// none between requests. A complete request stops it, also one that closes the connection
// (its response is then not cut short by it). Out of line: a request that comes whole in one
// read never gets here.
[[gnu::noinline]] void update_deadline(int fd, Entry& e, bool was_in_head,
                                       const http::ReadResult& read) {
  const unsigned header = g_header_timeout_ms;
  const unsigned whole = g_request_timeout_ms;
  if (!header && !whole) return;
  // The header deadline comes first while the head lasts: it alone needs re-arming later.
  const bool header_first = header && (!whole || header < whole);
  if (read.request_began) {
    if (!read.in_head) {
      sock_set_deadline(fd, whole);  // its head is complete (0: the header deadline stops)
    } else {
      if (header_first && whole) e.began_ms = monotonic_ms();
      sock_set_deadline(fd, header_first ? header : whole);
    }
    return;
  }
  if (!read.keep_state || read.finish) {
    sock_set_deadline(fd, 0);  // between requests again, or finishing
    return;
  }
  // The same request goes on: only the end of its head changes anything, and only where the
  // header deadline was the one armed.
  if (!was_in_head || read.in_head || !header_first) return;
  if (!whole) {
    sock_set_deadline(fd, 0);
    return;
  }
  // Its body is owed: the request deadline alone runs on, from the head's first read. Past
  // already (the header deadline armed instead fires up to a timer tick late), 1 ms: the
  // engine closes fd at its next timer step.
  const std::int64_t left = std::int64_t{whole} - (monotonic_ms() - e.began_ms);
  sock_set_deadline(fd, static_cast<unsigned>(std::max<std::int64_t>(left, 1)));
}

// Writes what the thread's output holds to fd. False if it could not be queued (the
// connection was then force-closed: fd and its Conn are gone).
// File bodies go out between the parts of the bytes, each with sock_write2(.file) (sendfile),
// which takes the FILE* whatever happens.
// Inlined: it runs once per read of every connection (bench/callgrind.sh, c64).
[[gnu::always_inline]] inline bool write_out(struct Reactor* r, int fd, http::Output& output) {
  std::string& out = output.bytes;
  std::vector<http::FileBody>& files = output.files;
  if (out.empty()) return true;
  ssize_t rc = 0;
  std::size_t from = 0;
  for (const http::FileBody& f : files) {
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

// Out of memory in a parse (std::bad_alloc from serve()): fd's parse state is nothing to go
// on from (responder.h), so fd closes at once; the responses owed so far are not sent, and
// the files they hold close with them.
[[gnu::noinline]] void drop(ThreadState& state, struct Reactor* r, int fd) {
  for (const http::FileBody& f : state.out.files) std::fclose(f.file);
  state.out.files.clear();
  state.out.bytes.clear();
  sock_force_close(r, fd);
}

// Discards what fd still has to read, then closes it once its queue is sent. The input is
// drained first so that the close is not turned into a reset by unread data (which could
// destroy the response before the client reads it); what comes later, or past kMaxDrain
// (the bound on one callback, so that a peer that keeps sending cannot hold the shard), the
// engine's lingering close reads and drops. After an error answered mid-request the client
// may still be sending: that close lingers whatever waits when the queue drains. Inlined
// into on_data: as a call it cost a short connection about 13 instructions
// (bench/callgrind.sh, close16).
[[gnu::always_inline]] inline void finish(ThreadState& state, struct Reactor* r, int fd) {
  ssize_t n;
  std::size_t drained = 0;
  while (drained < kMaxDrain && (n = sock_read(fd, state.discard, sizeof state.discard)) > 0) {
    drained += static_cast<std::size_t>(n);
  }
  // n < 0: EOF or an error, and the library closes fd itself; closing it here could reach a
  // new connection on the same number.
  if (drained < kMaxDrain && n != 0) return;
  // sock_close_lingering fails only where sock_close would do nothing (a closed fd).
  if (!state.responder.finished_on_error()) {
    sock_close(r, fd);
  } else {
    sock_close_lingering(r, fd);
  }
}

void on_open(struct Reactor*, int fd) {
  ThreadState* state = thread_state();
  Entry* table = state ? conn_table(*state) : nullptr;
  // No table, or an fd past it: on_data refuses the connection.
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds) return;
  state->release(table[fd]);  // on_close frees it; this only guards against a missed close
}

void on_close(struct Reactor*, int fd) {
  ThreadState* state = thread_state();
  Entry* table = state ? state->conns : nullptr;
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds) return;
  state->release(table[fd]);
}

// An upper bound on the file bodies fd's queue still holds (and so the files it holds open),
// from its queued bytes: each body counts over http::kSmallFileBytes until sendfile starts on
// it, and the one being sent may count less. Bytes of other responses make it larger than the
// truth, which only makes the Responder pause sooner; an empty queue makes it 0.
unsigned files_owed(int fd) {
  const ssize_t pending = sock_pending(fd);
  if (pending <= 0) return 0;
  const std::size_t bound = static_cast<std::size_t>(pending) / (http::kSmallFileBytes + 1) + 1;
  return static_cast<unsigned>(std::min<std::size_t>(bound, http::kMaxFileBodies));
}

// Keeps `input` in e.held until fd's queue drains; always false (fd waits). Out of memory,
// fd is closed: dropping the input would answer the requests after it out of turn.
bool hold(struct Reactor* r, int fd, Entry& e, std::string_view input) {
  try {
    e.held = new std::string(input);
  } catch (const std::bad_alloc&) {
    sock_force_close(r, fd);
  }
  return false;
}

bool serve_after_pause(ThreadState& state, struct Reactor* r, int fd, Entry& e,
                       std::string_view input, bool was_in_request);

// Parses `input`, fd's next bytes, and queues the responses (serve_after_pause() when the
// Responder paused at a bound). False when fd must not be read now: it closed or is finishing,
// or input waits. Inlined into on_data, with the caller's look-up of t_state: as a call of its
// own, with write_out() another, it cost a keep-alive request about 70 instructions
// (bench/callgrind.sh, c64).
[[gnu::always_inline]] inline bool serve(ThreadState& state, struct Reactor* r, int fd, Entry& e,
                                         std::string_view input) {
  http::Responder& responder = state.responder;
  http::Conn* c = e.conn;
  // A deadline runs exactly while the connection's last read ended inside a request, from the
  // read that request began in; a connection without a Conn of its own is between requests.
  const bool was_in_head = c && c->in_head();
  // Out of memory, this throws std::bad_alloc: on_data and on_ready catch it (drop()).
  const http::ReadResult read =
      responder.parse(c, input, &state.out, g_files ? files_owed(fd) : 0);
  if (responder.paused()) return serve_after_pause(state, r, fd, e, input, c != nullptr);
  if (!write_out(r, fd, state.out)) return false;
  if (c || read.request_began) update_deadline(fd, e, was_in_head, read);
  if (read.keep_state && !c) {
    // A Conn of its own, so that the next read parses on; or, for one that finished here,
    // the thread's shared mark (the scratch state it is copied from says finished()).
    const bool shared = read.finish && responder.scratch().finished();
    if (shared && !state.finishing) {
      state.finishing.reset(new (std::nothrow) http::Conn(responder.scratch()));
    }
    c = e.conn = shared ? state.finishing.get()
                        : new (std::nothrow) http::Conn(responder.scratch());
    if (!c) {
      sock_force_close(r, fd);
      return false;
    }
  } else if (!read.keep_state && c) {
    state.release_conn(e);  // between requests again: the next read starts from scratch
  }
  if (read.finish) {
    finish(state, r, fd);
    return false;
  }
  return true;
}

// serve() after a parse of `input` that paused at a bound, between requests (so not
// finishing, nor inside a request: was_in_request says whether the read began inside one,
// whose deadline stops). The rest of `input` follows at once if fd's queue is empty, else it
// waits in e.held, and fd is not read, until its queue has drained (on_ready). A request in
// that rest gets its deadlines when it is parsed, as if its first byte came then: meanwhile
// fd is not read, the wait is for the client to take its responses, and the idle timer
// covers a client that takes nothing. For that wait, fd's own watermarks are
// (1, 0) while the paused part is written (it ends with a response, so there is a write): the
// engine then stops reading fd once a write leaves more than a byte queued, and calls
// on_ready once the queue is empty. A queue of one byte holds no file body (each is over
// kSmallFileBytes) and is not waited for. Out of line: the bounds are far above what
// ordinary pipelining reaches.
[[gnu::noinline]] bool serve_after_pause(ThreadState& state, struct Reactor* r, int fd,
                                         Entry& e, std::string_view input,
                                         bool was_in_request) {
  if (sock_set_watermarks(fd, 1, 0) < 0) {
    // No memory for fd's own watermarks, so no on_ready would end the wait: give up on fd
    // once the responses owed so far are sent (the requests held are the client's to retry;
    // write_out hands the FILE*s over, and closed fd itself if it returns false).
    if (write_out(r, fd, state.out)) sock_close(r, fd);
    return false;
  }
  if (!write_out(r, fd, state.out)) return false;
  if (was_in_request && (g_header_timeout_ms || g_request_timeout_ms)) {
    sock_set_deadline(fd, 0);
  }
  if (e.conn) state.release_conn(e);  // between requests: the rest parses from scratch
  input.remove_prefix(input.size() - state.responder.unparsed());
  if (sock_pending(fd) > 1) return hold(r, fd, e, input);
  sock_set_watermarks(fd, 0, 0);  // the reactor's again
  return input.empty() || serve(state, r, fd, e, input);
}

// fd's queue drained after a pause: parses the input that waited (as serve()).
bool serve_held(struct Reactor* r, int fd, Entry& e) {
  sock_set_watermarks(fd, 0, 0);  // the reactor's again
  const std::unique_ptr<std::string> held(e.held);
  e.held = nullptr;
  return held->empty() || serve(t_state, r, fd, e, *held);
}

// Runs on the thread of the shard that owns fd once its queue drained after it filled the
// socket, or after a pause of serve() (the engine calls on_data next if input waits behind).
void on_ready(struct Reactor* r, int fd) {
  ThreadState* state = thread_state();
  Entry* table = state ? state->conns : nullptr;
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds || !table[fd].held) return;
  state->reactor = r;
  try {
    state->responder.refresh_date(r->last_tick);
    serve_held(r, fd, table[fd]);
  } catch (const std::bad_alloc&) {
    drop(*state, r, fd);
  }
}

// Runs on the thread of the shard that owns fd, whenever fd has input.
void on_data(struct Reactor* r, int fd) {
  // One look-up of the thread_local (its access runs an init check).
  ThreadState* const made = thread_state();
  Entry* table = made ? conn_table(*made) : nullptr;
  if (!table || fd < 0 || static_cast<std::size_t>(fd) >= g_max_fds) {
    sock_force_close(r, fd);
    return;
  }
  ThreadState& state = *made;
  state.reactor = r;
  Entry& e = table[fd];
  try {
    state.responder.refresh_date(r->last_tick);  // a new second's Date line may allocate
    // Input held back comes first. The engine calls on_data only once the pause it waited for
    // ended, and on_ready has usually parsed it already.
    if (e.held && !serve_held(r, fd, e)) return;
    char buf[16 * 1024];
    ssize_t n;  // 0: drained for now; -1: the peer left (the library closes the fd)
    std::size_t discarded = 0;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      if (e.conn && e.conn->finished()) {
        // Closing: the input is not parsed any more, and no more than kMaxDrain of it is read
        // per callback (what is left unread makes the close a reset; the response has had its
        // chance by then).
        discarded += static_cast<std::size_t>(n);
        if (discarded >= kMaxDrain) return;
        continue;
      }
      if (!serve(state, r, fd, e, std::string_view(buf, static_cast<std::size_t>(n)))) return;
    }
  } catch (const std::bad_alloc&) {
    drop(state, r, fd);
  }
}

// This tool's flags, on the app that parses the shared ones. The upper bounds only catch
// typos: no real request comes near them.
void add_flags(CLI::App& app) {
  constexpr std::uint64_t kGiB = 1024 * 1024 * 1024;
  const http::Limits defaults;
  app.add_option_function<std::string>(
         "--root",
         [](const std::string& dir) {
           g_files = http::StaticFiles::open(dir.c_str());
           if (!g_files) throw CLI::ValidationError("--root", dir + ": " + std::strerror(errno));
         },
         "serve the files under DIR (GET, HEAD; \"/\": DIR/index.html)")
      ->type_name("DIR");
  // 0: no deadline.
  app.add_option("--header-timeout-ms", g_header_timeout_ms,
                 "whole request header within MS (default " +
                     std::to_string(kDefaultHeaderTimeoutMs) + "; 0: none)")
      ->type_name("MS")
      ->transform(tools::whole_number(0, 3600 * 1000));
  // 0: no deadline.
  app.add_option("--request-timeout-ms", g_request_timeout_ms,
                 "whole request, body included, within MS (default " +
                     std::to_string(kDefaultRequestTimeoutMs) + "; 0: none)")
      ->type_name("MS")
      ->transform(tools::whole_number(0, 3600 * 1000));
  // At least 1: every request target has a byte, so 0 would refuse every request.
  app.add_option("--max-url", g_limits.max_url,
                 "longest request target; longer: 414 (default " +
                     std::to_string(defaults.max_url) + ")")
      ->type_name("BYTES")
      ->transform(tools::whole_number(1, kGiB));
  // 0: requests without header fields only.
  app.add_option("--max-header-bytes", g_limits.max_header_bytes,
                 "most bytes of header field lines, line ends aside; more: 431 (default " +
                     std::to_string(defaults.max_header_bytes) + ")")
      ->type_name("BYTES")
      ->transform(tools::whole_number(0, kGiB));
  app.add_option("--max-headers", g_limits.max_headers,
                 "most header fields; more: 431 (default " +
                     std::to_string(defaults.max_headers) + ")")
      ->type_name("N")
      ->transform(tools::whole_number(0, 1000 * 1000));
  app.add_flag("--metrics", g_metrics,
               "serve the pool profiler's metrics: GET /metrics (Prometheus), GET /status");
  // 0: requests without a body only.
  app.add_option("--max-body", g_limits.max_body,
                 "longest request body; longer: 413 (default " +
                     std::to_string(defaults.max_body) + ")")
      ->type_name("BYTES")
      ->transform(tools::whole_number(0, 1024 * kGiB));
}

}  // namespace

int main(int argc, char** argv) {
  // Raises the fd limit to the hard limit (as the server would): one fd per connection.
  const ssize_t fds = sock_max_capacity();
  if (fds <= 0) {
    std::fprintf(stderr, "http_server: cannot size the connection table: %s\n",
                 std::strerror(errno));
    return 1;
  }
  g_max_fds = static_cast<std::size_t>(fds);
  SockServerSettings settings{};
  settings.defer_accept_s = tools::kHttpDeferAcceptS;
  settings.on_open = on_open;
  settings.on_data = on_data;
  settings.on_ready = on_ready;
  settings.on_close = on_close;
  return tools::run_server(
      argc, argv,
      {.name = "http_server",
       .summary = "An HTTP/1.1 server: GET / answers \"Hello World!\"; keep-alive, pipelining; "
                  "static files with --root.",
       .default_port = "3000",
       .listening = "http_server listening on http://0.0.0.0:%d/",
       .listening_tls = "http_server listening on https://0.0.0.0:%d/",
       .alpn = "http/1.1"},
      settings, add_flags);
}
