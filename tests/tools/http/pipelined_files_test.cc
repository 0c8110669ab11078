// tools/http_server as a process (one shard, --root) against clients that pipeline thousands
// of GETs of files and read nothing: what the server holds for them stays bounded (its open
// fds, counted in /proc/PID/fd), and once they read, every response arrives whole and in
// order. Each wait is on a condition (poll with a deadline), never on a length of time.
#include <dirent.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tests/testing/server_process.h"
#include "tests/tools/http/one_file_root.h"
#include "tools/http/responder.h"

namespace {

namespace http = tools::http;
using testing_support::connect_client;
using testing_support::ms_left;
using testing_support::ServerProcess;

constexpr char kBinary[] = "tools/http_server";  // runfiles path
constexpr auto kDeadline = std::chrono::seconds(60);

// What a request asks for, and so what its response must be.
enum class Kind { kSmall, kBig, kHello, kMissing };

// big.bin: a megabyte and a bit, so that kMaxFileBodies of them never fit in the sockets'
// buffers (a few MB on loopback) while the client reads nothing, and its bodies are owed as
// FileBodies (well over kSmallFileBytes). Its bytes vary so that a misplaced slice shows.
std::string big_data() {
  std::string data((1 << 20) + 17, '\0');
  unsigned seed = 11;
  for (char& ch : data) {
    seed = seed * 1103515245u + 12345u;
    ch = static_cast<char>(seed >> 16);
  }
  return data;
}

// The fds the process holds now (-1 if /proc cannot say).
int open_fds(pid_t pid) {
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!dir) return -1;
  int n = 0;
  while (const dirent* entry = readdir(dir)) {
    if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0) ++n;
  }
  closedir(dir);
  return n;
}

// One pipelining client: the requests it sends (what each asks for), sent without blocking,
// and the responses checked one by one as they complete.
class Pipeline {
 public:
  Pipeline(int fd, std::vector<Kind> kinds, const std::string& big)
      : fd_(fd), kinds_(std::move(kinds)), big_(big) {
    for (const Kind kind : kinds_) out_ += request(kind);
  }

  int fd() const { return fd_; }
  bool all_sent() const { return sent_ == out_.size(); }
  bool all_answered() const { return answered_ == kinds_.size() || !error_.empty(); }
  std::size_t answered() const { return answered_; }
  const std::string& error() const { return error_; }

  // Sends what the socket takes now. False if the connection failed.
  bool send_some() {
    while (!all_sent()) {
      const ssize_t n =
          send(fd_, out_.data() + sent_, out_.size() - sent_, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
      sent_ += static_cast<std::size_t>(n);
    }
    return true;
  }

  // Reads what has arrived and checks each response it completes. False at EOF or an error
  // (error() says which response was wrong, if one was).
  bool receive_some() {
    char buf[64 * 1024];
    for (;;) {
      const ssize_t n = recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0) {
        if (error_.empty()) error_ = "EOF after " + std::to_string(answered_) + " responses";
        return false;
      }
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
      in_.append(buf, static_cast<std::size_t>(n));
      check_whole_responses();
      if (!error_.empty()) return false;
    }
  }

 private:
  static std::string request(Kind kind) {
    static constexpr std::string_view kTargets[] = {"/a.txt", "/big.bin", "/", "/missing.txt"};
    return "GET " + std::string(kTargets[static_cast<int>(kind)]) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  }

  void check_whole_responses() {
    std::size_t at = 0;
    while (error_.empty() && answered_ < kinds_.size()) {
      const std::size_t head_end = in_.find("\r\n\r\n", at);
      if (head_end == std::string::npos) break;
      const std::string_view head(in_.data() + at, head_end + 4 - at);
      const std::size_t cl = head.find("\r\nContent-Length: ");
      if (cl == std::string_view::npos) {
        error_ = "response " + std::to_string(answered_) + " has no length: " + std::string(head);
        break;
      }
      const std::size_t length = std::stoul(std::string(head.substr(cl + 18, 20)));
      if (in_.size() < head_end + 4 + length) break;
      check(head.substr(0, head.find("\r\n")),
            std::string_view(in_.data() + head_end + 4, length));
      at = head_end + 4 + length;
      ++answered_;
    }
    in_.erase(0, at);
  }

  void check(std::string_view status, std::string_view body) {
    std::string_view want_status = "HTTP/1.1 200 OK", want_body;
    switch (kinds_[answered_]) {
      case Kind::kSmall:
        want_body = "abc";
        break;
      case Kind::kBig:
        want_body = big_;
        break;
      case Kind::kHello:
        want_body = "Hello World!";
        break;
      case Kind::kMissing:
        want_status = "HTTP/1.1 404 Not Found", want_body = "Not Found";
        break;
    }
    if (status != want_status || body != want_body) {
      error_ = "response " + std::to_string(answered_) + ": " + std::string(status) +
               ", a body of " + std::to_string(body.size()) + " bytes; expected " +
               std::string(want_status) + " and " + std::to_string(want_body.size());
    }
  }

  int fd_;
  std::vector<Kind> kinds_;
  const std::string& big_;
  std::string out_;
  std::size_t sent_ = 0;
  std::string in_;
  std::size_t answered_ = 0;
  std::string error_;
};

class PipelinedFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing_support::one_file_root("pipelined_files");  // a.txt: "abc"
    ASSERT_NE(root_.files, nullptr);
    big_ = big_data();
    std::ofstream big(root_.root + "/big.bin", std::ios::binary);
    ASSERT_TRUE(big << big_ && big.flush());
    server_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{kBinary, "--port", "0", "--threads", "1", "--root", root_.root},
        kDeadline);
    ASSERT_TRUE(server_->started());
    const std::string line = server_->first_line();
    ASSERT_EQ(std::sscanf(line.c_str(), "http_server listening on http://0.0.0.0:%d/", &port_), 1)
        << line;
    // The probe: one request answered before the counts start, so that whatever the server
    // makes on its first connection is in the base count.
    probe_ = connect_client(port_);
    ASSERT_GE(probe_, 0);
    ASSERT_NO_FATAL_FAILURE(ask_probe());
    base_fds_ = open_fds(server_->pid());
    ASSERT_GT(base_fds_, 0);
  }

  void TearDown() override {
    if (probe_ >= 0) close(probe_);
    for (const int fd : clients_) close(fd);
    if (server_) {
      const int status = server_->stop();
      EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
    }
  }

  // GET / on the probe connection, answered. With one shard, an answer to a request sent
  // after the pipelines' bytes means the shard has run every callback those bytes brought.
  void ask_probe() {
    const std::string get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(send(probe_, get.data(), get.size(), MSG_NOSIGNAL), static_cast<ssize_t>(get.size()));
    std::string got;
    char buf[4096];
    while (got.find("Hello World!") == std::string::npos) {
      const ssize_t n = recv(probe_, buf, sizeof buf, 0);  // SO_RCVTIMEO: 10 s
      ASSERT_GT(n, 0) << "the probe's answer did not come";
      got.append(buf, static_cast<std::size_t>(n));
    }
  }

  std::unique_ptr<Pipeline> pipeline(std::vector<Kind> kinds) {
    const int fd = connect_client(port_);
    if (fd < 0) return nullptr;
    clients_.push_back(fd);
    return std::make_unique<Pipeline>(fd, std::move(kinds), big_);
  }

  // The most fds the server may hold with the probe and `clients` pipelines open: one socket
  // each, kMaxFileBodies file bodies owed on the connection asking for big.bin, and 2 more for
  // a file being opened at the moment of the count (StaticFiles::open_file's O_PATH fd and
  // the file's).
  int fd_bound(int clients) const {
    return base_fds_ + clients + static_cast<int>(http::kMaxFileBodies) + 2;
  }

  // Phase one: both pipelines sent (as far as the sockets take them) while nothing is read,
  // until each has had an answer arrive and the probe is answered. The server's fd count then.
  int send_without_reading(Pipeline& small, Pipeline& big) {
    for (Pipeline* p : {&small, &big}) EXPECT_TRUE(p->send_some());
    // An answer has started on each: the server has parsed their first reads.
    const auto end = std::chrono::steady_clock::now() + kDeadline;
    for (Pipeline* p : {&small, &big}) {
      pollfd pfd{p->fd(), POLLIN, 0};
      EXPECT_EQ(poll(&pfd, 1, ms_left(end)), 1) << "no answer arrived";
    }
    ask_probe();
    return open_fds(server_->pid());
  }

  // Phase two: reads both pipelines to the end (sending what is left as the server takes
  // it), with the server's fd count checked between reads. True once every response came.
  bool read_everything(Pipeline& small, Pipeline& big, int bound, int* most_fds) {
    const auto end = std::chrono::steady_clock::now() + kDeadline;
    while (!small.all_answered() || !big.all_answered()) {
      pollfd pfds[2];
      Pipeline* pipes[2] = {&small, &big};
      for (int i = 0; i < 2; ++i) {
        pfds[i] = {pipes[i]->fd(),
                   static_cast<short>(POLLIN | (pipes[i]->all_sent() ? 0 : POLLOUT)), 0};
      }
      if (poll(pfds, 2, ms_left(end)) <= 0) return false;  // the deadline passed
      for (int i = 0; i < 2; ++i) {
        if ((pfds[i].revents & POLLOUT) && !pipes[i]->send_some()) return false;
        if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !pipes[i]->receive_some()) {
          return false;
        }
      }
      *most_fds = std::max(*most_fds, open_fds(server_->pid()));
      if (*most_fds > bound) return false;
    }
    return true;
  }

  testing_support::OneFileRoot root_;
  std::string big_;
  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  int probe_ = -1;
  int base_fds_ = 0;
  std::vector<int> clients_;
};

// 4,000 requests on one connection (half of them for a 3-byte file, the rest "/" and a
// missing file) and 120 on another (big.bin and the small file in turn).
std::vector<Kind> small_kinds() {
  std::vector<Kind> kinds;
  for (int i = 0; i < 40000; ++i) {
    kinds.push_back(i % 4 < 2 ? Kind::kSmall : i % 4 == 2 ? Kind::kHello : Kind::kMissing);
  }
  return kinds;
}
std::vector<Kind> big_kinds() {
  std::vector<Kind> kinds;
  for (int i = 0; i < 120; ++i) kinds.push_back(i % 2 ? Kind::kSmall : Kind::kBig);
  return kinds;
}

// Every file body queued held its file open until sent, and one read's requests were all
// answered at once: a client that pipelined GETs and read nothing held an fd per request.
TEST_F(PipelinedFilesTest, ServerHoldsFewFdsForPipelinedFileGetsThatAreNotRead) {
  const std::unique_ptr<Pipeline> small = pipeline(small_kinds());
  const std::unique_ptr<Pipeline> big = pipeline(big_kinds());
  ASSERT_TRUE(small && big);
  const int fds = send_without_reading(*small, *big);
  EXPECT_LE(fds, fd_bound(2)) << "base " << base_fds_ << ", cap " << http::kMaxFileBodies;
  std::printf("server fds: %d before the pipelines, %d with them unread (bound %d)\n",
              base_fds_, fds, fd_bound(2));
}

// Once the clients read, nothing that was held back is lost or reordered: every response
// whole, in request order, with its body, and the fd bound kept all the while.
TEST_F(PipelinedFilesTest, EveryPipelinedResponseArrivesWholeAndInOrderOnceRead) {
  const std::unique_ptr<Pipeline> small = pipeline(small_kinds());
  const std::unique_ptr<Pipeline> big = pipeline(big_kinds());
  ASSERT_TRUE(small && big);
  EXPECT_LE(send_without_reading(*small, *big), fd_bound(2));
  int most_fds = 0;
  EXPECT_TRUE(read_everything(*small, *big, fd_bound(2), &most_fds))
      << "answered " << small->answered() << " and " << big->answered() << "; most fds "
      << most_fds << " (bound " << fd_bound(2) << ")";
  EXPECT_EQ(small->error(), "");
  EXPECT_EQ(big->error(), "");
  EXPECT_EQ(small->answered(), small_kinds().size());
  EXPECT_EQ(big->answered(), big_kinds().size());
}

}  // namespace
