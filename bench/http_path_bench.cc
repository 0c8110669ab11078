// The HTTP path of tools/http_server per read, without the sockets: parse + respond for one
// request and for a 16-request pipeline (issue 4, section 4), beside the raw loop's work on the
// same bytes as the baseline, in the same binary.
//
//   BM_LlhttpParseRespond/N     what http_server's on_data does with one read holding N of wrk's
//                               requests: refresh the Date line (time() and a compare), set up
//                               the shard's scratch Conn (llhttp_init and its flags), one
//                               llhttp_execute over the whole read with the server's callbacks
//                               (target appended to a std::string, header bytes and fields
//                               counted against the limits, keep-alive, method and path checked
//                               in on_message_complete, which appends the cached keep-alive
//                               response to the shard's output buffer), then the output buffer
//                               is handed on and cleared (the sock_write itself is left out).
//   BM_CountTerminatorsCanned/N what bench/raw_epoll.c does with the same read: count "\r\n\r\n"
//                               (the partial match carried across reads) and append one canned
//                               response per request found to an output buffer.
//
// tools/http_server.cc keeps its callbacks in an anonymous namespace of a binary, so they are
// reproduced here, kept in step by hand: the same callbacks, limits, checks and response bytes
// (on a fixed Date). If the server's per-request work changes, change this file with it.
// Differences from the raw loop, on purpose: the raw loop writes straight from a buffer pre-filled
// with copies of its response, the baseline here appends them (so both sides pay the copy into
// an output buffer, as the server does); the server's response is longer (Date and Connection
// lines), which is part of what is measured.
//
// items_per_second = requests per second; time per iteration / N = time per request.
#include <llhttp.h>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>

#include "benchmark/benchmark.h"

namespace {

// What wrk sends (wrk.format(nil) in bench/pipeline.lua, the same for the plain runs).
constexpr std::string_view kRequest = "GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";

// bench/raw_epoll.c's canned response.
constexpr std::string_view kCanned =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nHello World!";

// ---- tools/http_server.cc's per-request work, reproduced ----

constexpr std::size_t kMaxUrl = 8 * 1024;
constexpr std::size_t kMaxHeaderBytes = 16 * 1024;
constexpr unsigned kMaxHeaders = 100;
constexpr std::uint64_t kMaxBody = 1024 * 1024;
constexpr std::string_view kHello = "Hello World!";

struct Conn {
  llhttp_t parser;
  std::string url;
  std::size_t header_bytes = 0;
  std::uint64_t body_bytes = 0;
  unsigned headers = 0;
  int error_status = 0;
  bool in_message = false;
  bool headers_done = false;
  bool deadline_set = false;
  bool finished = false;
};

struct Shard {
  std::string out;
  Conn scratch;
  std::time_t date_second = -1;
  char date_line[64] = {};
  std::size_t date_length = 0;
  std::string hello;
};
Shard g_shard;  // one benchmark thread: the server's thread_local shard

std::string_view reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    default:
      return "Error";
  }
}

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
  out.append(g_shard.date_line, g_shard.date_length);
  out.append(extra_headers);
  out.append(keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  if (!head) out.append(body);
}

// The server formats the Date line once a second; here the second is fixed after the first
// call (so the response bytes stay the same), but the time() call and the compare are kept.
void refresh_date() {
  const std::time_t now = std::time(nullptr);
  benchmark::DoNotOptimize(now);
  if (g_shard.date_second != -1) return;
  std::tm tm;
  gmtime_r(&now, &tm);
  g_shard.date_length = std::strftime(g_shard.date_line, sizeof g_shard.date_line,
                                      "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  g_shard.date_second = now;
  g_shard.hello.clear();
  respond(g_shard.hello, 200, kHello, true, false);
}

Conn* conn_of(llhttp_t* parser) { return static_cast<Conn*>(parser->data); }

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
  return 0;
}

int on_url(llhttp_t* parser, const char* at, std::size_t length) {
  Conn* c = conn_of(parser);
  if (c->url.size() + length > kMaxUrl) return fail(parser, 414);
  c->url.append(at, length);
  return 0;
}

int on_header_field(llhttp_t* parser, const char*, std::size_t length) {
  Conn* c = conn_of(parser);
  c->header_bytes += length;
  if (c->header_bytes > kMaxHeaderBytes) return fail(parser, 431);
  return 0;
}

int on_header_field_complete(llhttp_t* parser) {
  if (++conn_of(parser)->headers > kMaxHeaders) return fail(parser, 431);
  return 0;
}

int on_header_value(llhttp_t* parser, const char*, std::size_t length) {
  Conn* c = conn_of(parser);
  c->header_bytes += length;
  if (c->header_bytes > kMaxHeaderBytes) return fail(parser, 431);
  return 0;
}

int on_headers_complete(llhttp_t* parser) {
  conn_of(parser)->headers_done = true;
  if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > kMaxBody) {
    return fail(parser, 413);
  }
  return 0;
}

int on_chunk_header(llhttp_t* parser) {
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

int on_message_complete(llhttp_t* parser) {
  Conn* c = conn_of(parser);
  c->in_message = false;
  const bool keep_alive = llhttp_should_keep_alive(parser) != 0;
  const auto method = static_cast<llhttp_method_t>(parser->method);
  const std::string_view url = c->url;
  const std::string_view path = url.substr(0, url.find('?'));
  const bool head = method == HTTP_HEAD;
  if (path != "/") {
    respond(g_shard.out, 404, "Not Found", keep_alive, head);
  } else if (method == HTTP_GET && keep_alive) {
    g_shard.out.append(g_shard.hello);
  } else if (method == HTTP_GET || head) {
    respond(g_shard.out, 200, kHello, keep_alive, head);
  } else {
    respond(g_shard.out, 405, "Method Not Allowed", keep_alive, false, "Allow: GET, HEAD\r\n");
  }
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
  s.on_headers_complete = on_headers_complete;
  s.on_chunk_header = on_chunk_header;
  s.on_body = on_body;
  s.on_message_complete = on_message_complete;
  return s;
}
const llhttp_settings_t g_settings = make_settings();

// One read of a connection with no Conn of its own (the common case: the read holds whole
// requests), as on_data handles it; the responses are left in g_shard.out. Returns llhttp's
// result.
llhttp_errno_t server_read(const char* buf, std::size_t n) {
  refresh_date();
  Conn* c = &g_shard.scratch;
  llhttp_init(&c->parser, HTTP_REQUEST, &g_settings);
  c->parser.data = c;
  c->error_status = 0;
  c->in_message = false;
  c->headers_done = false;
  c->deadline_set = false;
  c->finished = false;
  const llhttp_errno_t err = llhttp_execute(&c->parser, buf, n);
  // on_data's checks after a clean parse (the deadline and the Conn hand-over do not fire for
  // whole requests, but the tests are made).
  const bool in_head = c->in_message && !c->headers_done;
  benchmark::DoNotOptimize(in_head != c->deadline_set);
  benchmark::DoNotOptimize(c->in_message);
  return err;
}

// ---- bench/raw_epoll.c's per-request work ----

std::size_t count_requests(const char* buf, std::size_t n, unsigned* matched) {
  static const char term[4] = {'\r', '\n', '\r', '\n'};
  std::size_t found = 0;
  unsigned m = *matched;
  for (std::size_t i = 0; i < n; i++) {
    const char ch = buf[i];
    if (ch == term[m]) {
      if (++m == 4) {
        found++;
        m = 0;
      }
    } else {
      m = ch == '\r';
    }
  }
  *matched = m;
  return found;
}

// ---- the benchmarks ----

std::string requests(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s.append(kRequest);
  return s;
}

void BM_LlhttpParseRespond(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::string in = requests(n);
  std::string& out = g_shard.out;
  out.clear();
  // Checked once before timing: n whole responses, byte for byte the server's.
  if (server_read(in.data(), in.size()) != HPE_OK || out.size() != n * g_shard.hello.size() ||
      g_shard.hello.find("Connection: keep-alive\r\n\r\nHello World!") == std::string::npos) {
    state.SkipWithError("the server path did not answer every request");
    return;
  }
  out.clear();
  for (auto _ : state) {
    benchmark::DoNotOptimize(in.data());
    const llhttp_errno_t err = server_read(in.data(), in.size());
    benchmark::DoNotOptimize(err);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    out.clear();  // write_out: sock_write(out) then clear
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
  state.counters["response_bytes"] = static_cast<double>(g_shard.hello.size());
}

void BM_CountTerminatorsCanned(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::string in = requests(n);
  std::string out;
  unsigned matched = 0;
  if (count_requests(in.data(), in.size(), &matched) != n || matched != 0) {
    state.SkipWithError("the terminator count is wrong");
    return;
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(in.data());
    const std::size_t owed = count_requests(in.data(), in.size(), &matched);
    for (std::size_t i = 0; i < owed; ++i) out.append(kCanned);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    out.clear();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
  state.counters["response_bytes"] = static_cast<double>(kCanned.size());
}

BENCHMARK(BM_LlhttpParseRespond)->Arg(1)->Arg(16);
BENCHMARK(BM_CountTerminatorsCanned)->Arg(1)->Arg(16);

}  // namespace
