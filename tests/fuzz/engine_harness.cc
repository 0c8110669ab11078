#include "tests/fuzz/engine_harness.h"

#include <chrono>
#include <string>

#include "engine/reactor.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing/loopback.h"

namespace engine_harness {
namespace {

// Far beyond what any input needs (a megabyte through a socketpair), even under ASan on a
// loaded machine: reaching it means the engine stopped making progress.
constexpr auto kDeadline = std::chrono::seconds(20);
// Distinct offsets source() slices at.
constexpr std::size_t kSourceOffsets = std::size_t{1} << 20;

}  // namespace

Harness& Harness::get() {
  static Harness* h = new Harness;
  return *h;
}

Harness::Harness() {
  reactor_.on_close = on_close;
  FUZZ_CHECK(reactor_init(&reactor_) == 0, "reactor_init");
  turns(1);  // sock_stats wants a reactor that ran
}

void Harness::on_close(struct Reactor*, int fd) {
  Harness& h = get();
  if (fd < 0 || static_cast<std::size_t>(fd) >= h.closes_.size()) return;
  ++h.closes_[fd];
  h.reasons_[fd] = sock_close_reason();
}

void Harness::watch(int fd) {
  if (static_cast<std::size_t>(fd) >= closes_.size()) {
    closes_.resize(fd + 1);
    reasons_.resize(fd + 1);
  }
  closes_[fd] = 0;
  reasons_[fd] = SOCK_CLOSE_LOCAL;
}

int Harness::closes(int fd) const { return closes_.at(fd); }

enum SockCloseReason Harness::reason(int fd) const { return reasons_.at(fd); }

void Harness::turns(int n) {
  engine::Reactor* r = engine::Reactor::of(&reactor_, true);
  for (int i = 0; i < n; ++i) FUZZ_CHECK(r->run_once(0) >= 0, "run_once");
}

void Harness::drive_until(const std::function<bool()>& done, const char* what) {
  engine::Reactor* r = engine::Reactor::of(&reactor_, true);
  const auto end = std::chrono::steady_clock::now() + kDeadline;
  while (!done()) {
    FUZZ_CHECK(std::chrono::steady_clock::now() < end, std::string("no progress towards ") + what);
    FUZZ_CHECK(r->run_once(1) >= 0, "run_once");
  }
}

struct SockStats Harness::stats() {
  SockStats s{};
  s.size = sizeof s;
  FUZZ_CHECK(sock_stats(&reactor_, &s) == 0, "sock_stats");
  return s;
}

void Harness::check_nothing_left() {
  const SockStats s = stats();
  FUZZ_CHECK(s.connections == 0 && s.queued_bytes == 0 && s.outstanding == 0,
             "left on the reactor: " + std::to_string(s.connections) + " connections, " +
                 std::to_string(s.queued_bytes) + " queued bytes, " +
                 std::to_string(s.outstanding) + " packets");
  SockPoolStats shared{};
  FUZZ_CHECK(
      sock_pool_stats(nullptr, &shared) == 0 && shared.outstanding == 0,
      std::to_string(shared.outstanding) + " packets out of the pool of threads without a reactor");
}

std::string_view source(std::size_t n, unsigned write) {
  static const std::string& bytes =
      *new std::string(testing_support::pattern(kSourceOffsets + kLongestWrite, 7));
  FUZZ_CHECK(n <= kLongestWrite, "write too long");
  return std::string_view(bytes).substr(write * 40503u % kSourceOffsets, n);
}

const Files& files() {
  static const Files* f = [] {
    auto* made = new Files;
    const std::string dir = fuzz_support::make_scratch_dir("engine_fuzz");
    unsigned seed = 1000;
    for (const std::size_t size :
         {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{BUFFER_PACKET_SIZE},
          std::size_t{70000}, std::size_t{200000}}) {
      made->paths.push_back(dir + "/f" + std::to_string(size));
      made->contents.push_back(testing_support::pattern(size, seed++));
      fuzz_support::write_file(made->paths.back(), made->contents.back());
    }
    return made;
  }();
  return *f;
}

}  // namespace engine_harness
