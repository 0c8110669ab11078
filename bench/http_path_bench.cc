// The HTTP path of tools/http_server per read, without the sockets: parse + respond for one
// request and for a 16-request pipeline (issue 4, section 4), beside the raw loop's work on the
// same bytes as the baseline, in the same binary.
//
//   BM_LlhttpParseRespond/N     what http_server's on_data does with one read holding N of wrk's
//                               requests, by the same code (tools/http, which the server
//                               links): Responder::refresh_date (time() and a compare), then
//                               Responder::parse for a connection with no parse state of its
//                               own (the common case: the read holds whole requests), which
//                               resets the scratch state, runs llhttp over the whole read with
//                               the server's callbacks and limits and appends the cached
//                               keep-alive response per request to the Output; then the
//                               Output is cleared as write_out does after its sock_write (the
//                               sock_write itself is left out).
//   BM_CountTerminatorsCanned/N what bench/raw_epoll.c does with the same read: count "\r\n\r\n"
//                               (the partial match carried across reads) and append one canned
//                               response per request found to an output buffer.
//
// Differences from the raw loop, on purpose: the raw loop writes straight from a buffer
// pre-filled with copies of its response, the baseline here appends them (so both sides pay the
// copy into an output buffer, as the server does); the server's response is longer (Date and
// Connection lines), which is part of what is measured.
//
// items_per_second = requests per second; time per iteration / N = time per request.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "benchmark/benchmark.h"
#include "tools/http/responder.h"

namespace {

namespace http = tools::http;

// What wrk sends (wrk.format(nil) in bench/pipeline.lua, the same for the plain runs).
constexpr std::string_view kRequest = "GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";

// bench/raw_epoll.c's canned response.
constexpr std::string_view kCanned =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nHello World!";

// The server's answer to kRequest, around its Date line.
constexpr std::string_view kHelloHead =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\nDate: ";
constexpr std::string_view kHelloTail = " GMT\r\nConnection: keep-alive\r\n\r\nHello World!";
constexpr std::size_t kHelloSize = kHelloHead.size() + 25 + kHelloTail.size();  // IMF-fixdate

// bench/raw_epoll.c's per-request work.
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

std::string requests(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s.append(kRequest);
  return s;
}

// n keep-alive "Hello World!" responses, each byte for byte the server's (any Date value).
bool is_hello_responses(std::string_view out, std::size_t n) {
  if (out.size() != n * kHelloSize) return false;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string_view one = out.substr(i * kHelloSize, kHelloSize);
    if (one.substr(0, kHelloHead.size()) != kHelloHead ||
        one.substr(kHelloSize - kHelloTail.size()) != kHelloTail) {
      return false;
    }
  }
  return true;
}

void BM_LlhttpParseRespond(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const std::string in = requests(n);
  http::Responder responder(http::Limits{}, nullptr);  // the server's defaults, no --root
  http::Output out;
  // Checked once before timing: n whole responses, the connection kept open with no state.
  const http::ReadResult first = responder.parse(nullptr, in, &out);
  if (first.finish || first.keep_state || responder.paused() || !out.files.empty() ||
      !is_hello_responses(out.bytes, n)) {
    state.SkipWithError("the server path did not answer every request");
    return;
  }
  out.bytes.clear();
  for (auto _ : state) {
    benchmark::DoNotOptimize(in.data());
    responder.refresh_date();
    const http::ReadResult read = responder.parse(nullptr, in, &out);
    benchmark::DoNotOptimize(read);
    benchmark::DoNotOptimize(out.bytes.data());
    benchmark::ClobberMemory();
    out.bytes.clear();  // write_out: sock_write(out) then clear
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
  state.counters["response_bytes"] = static_cast<double>(kHelloSize);
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
