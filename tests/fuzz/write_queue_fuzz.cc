// libFuzzer target: an fd's write queue (engine/write_queue.h) driven through the C API by a
// random sequence of copies, .move buffers, .file writes, packet chains (sock_send_packet),
// urgent writes of each kind, flushes, reactor turns, peer reads and a close or force close,
// against a model of the bytes the peer must receive.
//
// The fd is one end of an AF_UNIX socketpair attached to a reactor this thread drives; the
// harness reads the other end (its send buffer optionally shrunk, so that packets are often
// sent in part). The model is the queue as write_queue.h and libsock.h state it: a chain of
// packets in which a write starts a new packet unless it is a copy that fits in the tail
// packet (memory, not urgent, not started: libsock.h "small writes are always merged"; the
// room of a packet is BUFFER_PACKET_SIZE); the first packet of each write may be interrupted
// until any of its bytes leaves; an urgent write goes before the first such packet that is
// not itself urgent, else at the end. What leaves the queue is observed, not predicted: after
// each operation sock_pending() says how much of the queue is left, and the writes_direct
// counter (sock_stats) says whether a copy went to the kernel at once (the direct first write:
// what the kernel took is sent, the rest is queued as the rest of a started write).
// Asserted:
// - the peer reads exactly the model's bytes: at every read a prefix of what left the queue,
//   at the end everything queued (close) or what had left before the queue was dropped
//   (force close), then EOF;
// - writes after sock_close fail with EPIPE, and with EBADF once the fd closed, taking their
//   .move buffer and FILE* all the same (ASan reports a leak otherwise); a refused packet chain
//   stays the caller's;
// - on_close runs exactly once, reason SOCK_CLOSE_LOCAL;
// - afterwards nothing is left: no packet out of the reactor's pool or the pool of threads
//   without a reactor, no queued bytes, no connection, no fd (and no memory: ASan).
//
// Input: byte 0 picks the send buffer (default, 4 KB, 16 KB, 64 KB); then operations, each an
// opcode byte and its arguments (bytes, little-endian 16-bit numbers; a short input reads 0s):
//   opcode & 0x80: urgent (copy, move, file, packets);
//   opcode & 0x3f: 0x3e close, 0x3f force close, otherwise (that % 8):
//     0 copy LEN16 | 1 move LEN16 | 2 file INDEX OFFSET16 (x4, may pass the end) LEN16 (0: all;
//       at most what the file holds from there)
//     3 packets COUNT, then COUNT x (KIND LEN16 | file: KIND INDEX OFFSET16)
//     4 flush | 5 read LEN16 | 6 run TURNS | 7 pump TURNS (run and read all)
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/fuzz/engine_harness.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing/loopback.h"

namespace {

using engine_harness::files;
using engine_harness::Files;
using engine_harness::source;
using fuzz_support::Input;

constexpr std::size_t kPacket = BUFFER_PACKET_SIZE;
// A bound on the bytes one input writes, so that every input runs in milliseconds.
constexpr std::size_t kMaxBytesPerRun = 256 * 1024;
constexpr int kSendBuffers[] = {0, 4 * 1024, 16 * 1024, 64 * 1024};
// The queue as write_queue.h describes it (see the top of the file). It keeps views of the
// bytes written, which live in source() and files().
class QueueModel {
 public:
  // Empty again, keeping the memory it had.
  void clear() {
    queue_.clear();
    sent_.clear();
  }

  // What left the queue so far (and direct writes), in order.
  const std::string& sent() const { return sent_; }
  // What left it and what is in it, in order: the whole stream once everything is sent.
  void all(std::string* out) const {
    *out = sent_;
    for (const Packet& p : queue_) {
      for (const std::string_view part : p.parts) out->append(part);
    }
  }
  std::size_t queued() const {
    std::size_t n = 0;
    for (const Packet& p : queue_) n += p.size;
    return n;
  }

  // A copy: merged into the tail packet while it has room (not urgent), the rest in new
  // packets of kPacket bytes. `rest_of_write`: the start already went to the kernel.
  void copy(std::string_view data, bool urgent, bool rest_of_write) {
    const std::size_t merged = urgent ? 0 : std::min(data.size(), tail_room());
    if (merged) {
      queue_.back().parts.push_back(data.substr(0, merged));
      queue_.back().size += merged;
    }
    std::vector<Packet> chain;
    for (std::size_t at = merged; at < data.size(); at += kPacket) {
      const std::string_view part = data.substr(at, kPacket);
      chain.push_back({{part}, part.size(), true, chain.empty(), urgent, false});
    }
    if (chain.empty()) return;
    chain.front().can_interrupt = merged == 0 && !rest_of_write;
    link(std::move(chain), urgent);
  }

  // Bytes sent to the kernel directly, ahead of an empty queue.
  void direct(std::string_view data) { sent_.append(data); }

  // A write of its own packets (.move, .file, a chain): (bytes, whether a later copy may merge
  // into it) for each packet, none empty.
  void packets(const std::vector<std::pair<std::string_view, bool>>& contents, bool urgent) {
    std::vector<Packet> chain;
    for (const auto& [bytes, memory] : contents) {
      chain.push_back({{bytes}, bytes.size(), memory, chain.empty(), urgent, false});
    }
    if (!chain.empty()) link(std::move(chain), urgent);
  }

  // n more bytes left the queue's head.
  void consume(std::size_t n) {
    while (n) {
      FUZZ_CHECK(!queue_.empty(), "the engine sent more than was queued");
      Packet& head = queue_.front();
      if (n >= head.size) {
        n -= head.size;
        for (const std::string_view part : head.parts) sent_.append(part);
        queue_.pop_front();
        continue;
      }
      head.size -= n;
      head.can_interrupt = false;
      head.started = true;
      while (n) {
        std::string_view& part = head.parts.front();
        const std::size_t take = std::min(n, part.size());
        sent_.append(part.substr(0, take));
        part.remove_prefix(take);
        n -= take;
        if (part.empty()) head.parts.erase(head.parts.begin());
      }
    }
  }

 private:
  struct Packet {
    std::vector<std::string_view> parts;  // its bytes not sent yet (a copy may have merged)
    std::size_t size;                     // their total
    bool memory;  // a packet's own memory (copies, chain packets so built): mergeable
    bool can_interrupt;
    bool urgent;
    bool started;  // some of its bytes left (only the head)
  };

  std::size_t tail_room() const {
    if (queue_.empty()) return 0;
    const Packet& t = queue_.back();
    if (!t.memory || t.urgent || t.started) return 0;
    return kPacket - t.size;
  }

  void link(std::vector<Packet> chain, bool urgent) {
    auto at = queue_.end();
    if (urgent) {
      at = std::find_if(queue_.begin(), queue_.end(),
                        [](const Packet& p) { return p.can_interrupt && !p.urgent; });
    }
    queue_.insert(at, std::make_move_iterator(chain.begin()), std::make_move_iterator(chain.end()));
  }

  std::deque<Packet> queue_;
  std::string sent_;
};

// One input's run: the fd under test, its peer, the model and what the peer read. One Run
// serves every input (start() to finish()), so that its buffers keep their memory: fresh
// allocations of hundreds of kilobytes per input would cost more than the input itself.
class Run {
 public:
  explicit Run(engine_harness::Harness& h) : h_(h) {}

  void start(int send_buffer) {
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
               "socketpair");
    fd_ = sv[0];
    peer_ = sv[1];
    if (send_buffer) testing_support::set_sndbuf(fd_, send_buffer);
    FUZZ_CHECK(sock_open(h_.reactor(), fd_) == 0, "sock_open");
    h_.watch(fd_);
    queued_ = consumed_ = total_ = 0;
    writes_ = 0;
    closing_ = forced_ = false;
  }

  void op(Input& in) {
    const uint8_t code = in.byte();
    const bool urgent = code & 0x80;
    switch (code & 0x3f) {
      case 0x3e:
        if (!closing_ && !gone()) {
          sock_close(h_.reactor(), fd_);
          closing_ = true;
        }
        break;
      case 0x3f:
        if (!gone()) {
          sent_at_force_ = model_.sent();
          forced_ = true;
          sock_force_close(h_.reactor(), fd_);
          FUZZ_CHECK(gone(), "sock_force_close did not close at once");
        }
        break;
      default:
        switch ((code & 0x3f) % 8) {
          case 0:
            copy(in.u16(), urgent);
            break;
          case 1:
            move(in.u16(), urgent);
            break;
          case 2:
            file(in, urgent);
            break;
          case 3:
            packets(in, urgent);
            break;
          case 4:
            flush();
            break;
          case 5:
            read(in.u16() + 1u);
            break;
          case 6:
            h_.turns(in.byte() % 4 + 1);
            break;
          case 7:
            pump(in.byte() % 4 + 1);
            break;
        }
    }
    observe();
  }

  // Closes (unless done), lets everything drain and checks the end state.
  void finish() {
    if (!closing_ && !gone()) {
      sock_close(h_.reactor(), fd_);
      closing_ = true;
      observe();
    }
    if (forced_) {
      expected_ = sent_at_force_;
    } else {
      model_.all(&expected_);
    }
    bool eof = false;
    h_.drive_until(
        [&] {
          eof = eof || !testing_support::drain(peer_, &received_);
          return gone() && eof;
        },
        "the queue to drain and the peer to see EOF");
    FUZZ_CHECK(received_ == expected_,
               "the peer read " + std::to_string(received_.size()) + " bytes, the model says " +
                   std::to_string(expected_.size()) + "; first difference at " +
                   std::to_string(testing_support::first_difference(received_, expected_)));
    FUZZ_CHECK(h_.closes(fd_) == 1 && h_.reason(fd_) == SOCK_CLOSE_LOCAL, "on_close");
    close(peer_);
    // Emptied here rather than by the next start(): libFuzzer runs its (slow) leak check after
    // every input that allocated more than it freed.
    model_.clear();
    sent_at_force_.clear();
    received_.clear();
    expected_.clear();
  }

 private:
  bool gone() const { return h_.closes(fd_) > 0; }

  // The result of a write: 0 while the connection takes writes, else the errors libsock.h
  // names for a closing and a closed fd. An empty copy or .move is a no-op that succeeds
  // unless the fd is closed.
  bool accepted(ssize_t rc, bool empty = false) {
    if (!gone() && (!closing_ || empty)) {
      FUZZ_CHECK(rc == 0, "a write failed on an open connection: errno " + std::to_string(errno));
      return true;
    }
    FUZZ_CHECK(rc == -1 && (gone() ? errno == EBADF : errno == EPIPE),
               "a write after close: rc " + std::to_string(rc) + " errno " + std::to_string(errno));
    return false;
  }

  bool room(std::size_t n) {
    if (total_ + n > kMaxBytesPerRun) return false;
    total_ += n;
    return true;
  }

  void copy(std::size_t n, bool urgent) {
    if (!room(n)) return;
    const std::string_view data = source(n, ++writes_);
    const uint64_t direct = h_.stats().writes_direct;
    if (!accepted(sock_write2(.fd = fd_, .buffer = data.data(), .length = n, .urgent = urgent),
                  n == 0)) {
      return;
    }
    if (h_.stats().writes_direct != direct) {
      // Straight to the kernel (the queue was empty): what it did not take was queued.
      const ssize_t pending = sock_pending(fd_);
      FUZZ_CHECK(pending >= 0 && static_cast<std::size_t>(pending) <= n, "direct write");
      const std::size_t took = n - static_cast<std::size_t>(pending);
      model_.direct(data.substr(0, took));
      model_.copy(data.substr(took), urgent, took > 0);
      queued_ += static_cast<std::size_t>(pending);
    } else {
      model_.copy(data, urgent, false);
      queued_ += n;
    }
  }

  void move(std::size_t n, bool urgent) {
    if (!room(n)) return;
    const std::string_view data = source(n, ++writes_);
    void* buffer = std::malloc(n ? n : 1);
    std::memcpy(buffer, data.data(), n);
    if (!accepted(
            sock_write2(.fd = fd_, .buffer = buffer, .length = n, .move = 1, .urgent = urgent),
            n == 0)) {
      return;
    }
    if (n) model_.packets({{data, false}}, urgent);
    queued_ += n;
  }

  // A FILE* at `offset` of file `index` (past its end is allowed), and the bytes from there
  // to the end.
  std::pair<FILE*, std::string_view> open_at(uint8_t index, std::size_t offset) {
    const Files& f = files();
    const std::size_t i = index % f.paths.size();
    FILE* file = std::fopen(f.paths[i].c_str(), "rb");
    FUZZ_CHECK(file && fseeko(file, static_cast<off_t>(offset), SEEK_SET) == 0, f.paths[i]);
    const std::string_view content = f.contents[i];
    return {file, content.substr(std::min(offset, content.size()))};
  }

  void file(Input& in, bool urgent) {
    const uint8_t index = in.byte();
    const std::size_t offset = std::size_t{in.u16()} * 4;  // up to past the largest file
    const std::size_t length = in.u16();
    auto [file, rest] = open_at(index, offset);
    if (length) rest = rest.substr(0, length);
    if (!room(rest.size())) {
      std::fclose(file);
      return;
    }
    // A length past the file's end fails the connection (libsock.h; file_write_test proves
    // it): the stream model here asks for what the file holds.
    const std::size_t asked = length ? rest.size() : 0;
    if (!accepted(sock_write2(.fd = fd_, .buffer = file, .length = asked, .urgent = urgent,
                              .file = 1))) {
      return;
    }
    if (!rest.empty()) model_.packets({{rest, false}}, urgent);
    queued_ += rest.size();
  }

  // A chain of 1 to 4 non-empty packets: the packet's own memory, a malloc'd buffer, or a
  // file from an offset before its end. (No empty packets: when one is dropped is the
  // engine's choice, and the contract does not say whether it is a boundary for urgent data.)
  void packets(Input& in, bool urgent) {
    const int count = in.byte() % 4 + 1;
    std::vector<std::pair<std::string_view, bool>> contents;
    Packet* head = nullptr;
    Packet** link = &head;
    std::size_t bytes = 0;
    for (int i = 0; i < count; ++i) {
      Packet* p = sock_checkout_packet();
      FUZZ_CHECK(p != nullptr, "sock_checkout_packet");
      const uint8_t kind = in.byte() % 3;
      if (kind == 2) {
        const Files& f = files();
        const auto index = static_cast<uint8_t>(1 + in.byte() % (f.paths.size() - 1));
        auto [file, rest] = open_at(index, in.u16() % f.contents[index].size());
        p->buffer = file;
        p->metadata.is_file = 1;
        contents.push_back({rest, false});
      } else {
        const std::size_t n = kind == 0 ? in.u16() % kPacket + 1 : in.u16() + 1u;
        const std::string_view data = source(n, ++writes_);
        if (kind == 1) {
          p->buffer = std::malloc(n);
          p->metadata.external = 1;
        }
        std::memcpy(p->buffer, data.data(), n);
        p->length = static_cast<ssize_t>(n);
        contents.push_back({data, kind == 0});
      }
      bytes += contents.back().first.size();
      *link = p;
      link = &p->metadata.next;
    }
    head->metadata.urgent = urgent;
    if (!room(bytes)) {
      sock_free_packet(head);
      return;
    }
    if (!accepted(sock_send_packet(fd_, head))) {
      sock_free_packet(head);  // refused: still ours
      return;
    }
    model_.packets(contents, urgent);
    queued_ += bytes;
  }

  void flush() {
    const bool was_gone = gone();
    const ssize_t rc = sock_flush(fd_);
    if (was_gone) {
      FUZZ_CHECK(rc == -1 && errno == EBADF, "sock_flush of a closed fd");
    } else {
      FUZZ_CHECK(rc >= 0, "sock_flush failed: errno " + std::to_string(errno));
    }
  }

  // Reads up to n bytes at the peer; what arrived so far must be a prefix of what the model
  // says left the queue.
  void read(std::size_t n) {
    char buf[4096];
    while (n) {
      const ssize_t r = recv(peer_, buf, std::min(n, sizeof buf), MSG_DONTWAIT);
      if (r <= 0) break;
      received_.append(buf, static_cast<std::size_t>(r));
      n -= static_cast<std::size_t>(r);
    }
    check_prefix();
  }

  void pump(int turns) {
    for (int i = 0; i < turns; ++i) {
      h_.turns(1);
      observe();
      testing_support::drain(peer_, &received_);
      check_prefix();
    }
  }

  void check_prefix() {
    const std::string& sent = forced_ ? sent_at_force_ : model_.sent();
    FUZZ_CHECK(received_.size() <= sent.size() && sent.compare(0, received_.size(), received_) == 0,
               "the peer read " + std::to_string(received_.size()) +
                   " bytes, not a prefix of the " + std::to_string(sent.size()) +
                   " that left the queue; first difference at " +
                   std::to_string(testing_support::first_difference(received_, sent)));
  }

  // Brings the model up to what left the queue (sock_pending: what is still in it).
  void observe() {
    if (forced_) return;
    std::size_t left = 0;
    if (!gone()) {
      const ssize_t pending = sock_pending(fd_);
      FUZZ_CHECK(pending >= 0, "sock_pending of an open fd");
      left = static_cast<std::size_t>(pending);
    } else {
      FUZZ_CHECK(closing_, "the connection closed by itself");
    }
    FUZZ_CHECK(left <= queued_ && queued_ - left >= consumed_, "sock_pending went up");
    model_.consume(queued_ - left - consumed_);
    consumed_ = queued_ - left;
    FUZZ_CHECK(model_.queued() == left, "the model holds " + std::to_string(model_.queued()) +
                                            " bytes, sock_pending " + std::to_string(left));
  }

  engine_harness::Harness& h_;
  int fd_ = -1;
  int peer_ = -1;
  QueueModel model_;
  std::size_t queued_ = 0;    // bytes that entered the queue (not those sent directly)
  std::size_t consumed_ = 0;  // of those, how many left it
  std::size_t total_ = 0;     // bytes written, for kMaxBytesPerRun
  unsigned writes_ = 0;
  bool closing_ = false;
  bool forced_ = false;
  std::string sent_at_force_;
  std::string received_;
  std::string expected_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  engine_harness::Harness& h = engine_harness::Harness::get();
  static Run& run = *new Run(h);
  files();
  const int free_fd = fuzz_support::lowest_free_fd();
  Input in(data, size);
  run.start(kSendBuffers[in.byte() % 4]);
  while (!in.empty()) run.op(in);
  run.finish();
  h.check_nothing_left();
  FUZZ_CHECK(fuzz_support::lowest_free_fd() == free_fd, "fd leaked");
  return 0;
}
