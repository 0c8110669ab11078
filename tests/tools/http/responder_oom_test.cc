// tools/http/responder.cc out of memory: every allocation a parse makes is failed in turn (a
// replacement operator new, armed per thread). parse() throws std::bad_alloc to its caller
// (through llhttp's C frames, built with -fexceptions for it), holds no file it opened, and
// the Responder answers the next connection as if nothing had happened.
#include <dirent.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <string_view>

#include "tests/tools/http/one_file_root.h"
#include "tools/http/responder.h"

namespace {

// Allocations on this thread that still succeed before each one fails; -1: none fails.
thread_local long t_allocations_left = -1;

}  // namespace

void* operator new(std::size_t size) {
  if (t_allocations_left == 0) throw std::bad_alloc();
  if (t_allocations_left > 0) --t_allocations_left;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

namespace http = tools::http;

const std::string kGet = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

// Open fds of this process (the directory stream's own included: compare counts only).
int open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (readdir(dir)) ++n;
  closedir(dir);
  return n;
}

// The Output's FILE*s are the caller's (responder.h): a dropped connection's caller closes them.
void close_files(http::Output& out) {
  for (const http::FileBody& f : out.files) std::fclose(f.file);
  out.files.clear();
}

// One read parsed as the server parses it, with the allocations after the first `allowed`
// failing. True when it threw bad_alloc (which must be the only exception).
bool parse_failing_after(http::Responder& responder, http::Conn* conn, std::string_view read,
                         long allowed) {
  http::Output out;
  t_allocations_left = allowed;
  bool threw = false;
  try {
    responder.parse(conn, read, &out);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  t_allocations_left = -1;
  close_files(out);
  return threw;
}

// A fresh connection's GET / on `responder`: its whole answer.
std::string answer_to_get(http::Responder& responder) {
  http::Output out;
  const http::ReadResult result = responder.parse(nullptr, kGet, &out);
  EXPECT_FALSE(result.finish);
  EXPECT_FALSE(result.keep_state);
  close_files(out);
  return out.bytes;
}

// Fails the 1st, 2nd, ... allocation of parse(conn(), read) until one parse needs no more
// than were allowed; after each, the Responder must answer a fresh connection as before, and
// no fd may be left open.
template <typename MakeConn>
void expect_every_allocation_failure_handled(http::Responder& responder, MakeConn&& conn,
                                             std::string_view read) {
  const std::string expected = answer_to_get(responder);
  const int fds = open_fds();
  long allowed = 0;
  for (; allowed < 1000; ++allowed) {
    std::unique_ptr<http::Conn> own = conn();
    if (!parse_failing_after(responder, own.get(), read, allowed)) break;
    EXPECT_EQ(open_fds(), fds) << "an fd left open after allocation " << allowed << " failed";
    EXPECT_EQ(answer_to_get(responder), expected) << "after allocation " << allowed << " failed";
  }
  EXPECT_GT(allowed, 0) << "the parse allocates nothing: nothing was failed";
  EXPECT_LT(allowed, 1000) << "the parse never completed";
}

std::unique_ptr<http::Conn> no_conn() { return nullptr; }

TEST(ResponderOutOfMemoryTest, PipelinedRequestsOnTheScratchStateThrowAndLeaveItUsable) {
  http::Limits limits;
  http::Responder responder(limits, nullptr);
  std::string read;
  for (int i = 0; i < 8; ++i) read += "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n" + kGet;
  expect_every_allocation_failure_handled(responder, no_conn, read);
}

TEST(ResponderOutOfMemoryTest, TargetSplitAcrossReadsThrowsWhileItsConnectionKeepsIt) {
  http::Limits limits;
  http::Responder responder(limits, nullptr);
  // The connection's own state after a read that ended inside the target: the next read's
  // part of it is appended to what was kept.
  const auto mid_target = [&] {
    http::Output out;
    const http::ReadResult r = responder.parse(nullptr, "GET /" + std::string(300, 'a'), &out);
    EXPECT_TRUE(r.keep_state);
    return std::make_unique<http::Conn>(responder.scratch());
  };
  expect_every_allocation_failure_handled(responder, mid_target,
                                          std::string(3000, 'b') + " HTTP/1.1\r\nHost: x\r\n\r\n");
}

TEST(ResponderOutOfMemoryTest, FileRequestsThrowWithoutLeavingTheirFilesOpen) {
  testing_support::OneFileRoot root = testing_support::one_file_root("oom");
  ASSERT_TRUE(root.files);
  // A body over kSmallFileBytes goes out as a FILE*; a.txt ("abc") is read into the response.
  const std::string big_path = root.root + "/big.bin";
  FILE* big = std::fopen(big_path.c_str(), "w");
  ASSERT_NE(big, nullptr);
  ASSERT_EQ(std::fwrite(std::string(2 * http::kSmallFileBytes, 'x').data(), 1,
                        2 * http::kSmallFileBytes, big),
            2 * http::kSmallFileBytes);
  std::fclose(big);
  http::Limits limits;
  http::Responder responder(limits, root.files.get());
  std::string read;
  for (int i = 0; i < 3; ++i) {
    read += "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n";
    read += "HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  expect_every_allocation_failure_handled(responder, no_conn, read);
}

}  // namespace
