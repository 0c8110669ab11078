// libFuzzer target: transport layer chains (engine/tlc.h, libsock.h "Transport Layer
// Callbacks"). Two sock_ connections on one reactor, the ends of an AF_UNIX socketpair, get
// the same random stack of up to kMaxLayers layers; the writer sends copies, .move buffers,
// .file ranges and control records of its layers (sock_tlc_write) in random sizes, then
// closes or force-closes; the reader reads its plaintext in a random buffer size, draining
// each on_data or reading once per call. The layers, each a real transformation:
// - xor: every byte XOR a key (stateless; wrap and unwrap in the wrong order garble the rest);
// - record: a frame [u32 length][u32 sequence][u16 padding][u8 type] + payload + padding, the
//   padding of each record different, so packets grow into the headroom; unwrap reassembles
//   frames split across reads and checks that data records come in sequence (the engine must
//   wrap records in wire order), ping records (sock_tlc_write mid-stream) are dropped, and a
//   close record (sock_tlc_write from before_close, as TLS sends close_notify) comes last;
// - rle: run-length compression of each record, with a framed header; its unwrap can turn
//   one read into far more plaintext than max_len and must hold the rest;
// - fail: passes records through until its k-th, whose wrap fails (EPROTO: the writer fails).
// Asserted: on a graceful close the reader gets exactly the bytes written and every record
// layer a close record last, the writer closes with SOCK_CLOSE_LOCAL and the reader with
// SOCK_CLOSE_PEER; after a force close or a failed wrap the reader gets a prefix of them (and
// the writer SOCK_CLOSE_ERROR for the failure); a layer is given a packet it can grow into the
// headroom (else the check aborts); every layer's on_clear runs once; nothing is left
// (packets, queued bytes, fds, memory).
// Not covered here: urgent writes (their order through layers is the write queue's, which
// write_queue_fuzz models; with layers sock_pending also counts the framing).
//
// Input: byte 0: layers (1 + b % 7); then per layer, bottom first, KIND PARAM; then a config
// byte (bits 0-2: the reader's buffer size, bit 3: one sock_read per on_data call, bits 4-5:
// the writer's send buffer); then operations, each an opcode byte and its arguments:
//   0 copy LEN16 | 1 move LEN16 | 2 file INDEX OFFSET16 LEN16 | 3 ping LAYER
//   4 run TURNS | 5 flush | 6 close | 7 force close | 8 runs LEN16 BYTE (a copy of LEN16 times
//   BYTE, which rle compresses)     (opcode % 9)
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/fuzz/engine_harness.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing/loopback.h"

namespace {

using engine_harness::source;
using fuzz_support::Input;

constexpr std::size_t kMaxLayers = 7;  // libsock.h, sock_tlc_add
constexpr std::size_t kHeadroom = BUFFER_PACKET_SIZE - BUFFER_FILE_READ_SIZE;
constexpr std::size_t kMaxBytesPerRun = 128 * 1024;
constexpr std::size_t kReadSizes[] = {1, 7, 100, 4096, 16384, 17409, 65536, 200000};
constexpr int kSendBuffers[] = {0, 4 * 1024, 16 * 1024, 64 * 1024};

enum class Kind : uint8_t { kXor, kRecord, kRle, kFail };
constexpr int kKinds = 4;

// record: [u32 payload length][u32 sequence][u16 padding][u8 type]
constexpr std::size_t kRecordHeader = 11;
enum RecordType : uint8_t { kData = 0, kPing = 1, kClose = 2 };
// Each record layer may add its header and this much padding: seven of them stay within the
// headroom, as libsock.h asks of layers.
constexpr std::size_t kMaxPadding = kHeadroom / kMaxLayers - kRecordHeader;
static_assert(kMaxLayers * (kRecordHeader + kMaxPadding) <= kHeadroom);
// rle: [u32 encoded length][u32 plain length][u8 mode: 0 raw, 1 runs of (count, byte)]
constexpr std::size_t kRleHeader = 9;
static_assert(kMaxLayers * kRecordHeader + kRleHeader <= kHeadroom);

// What the run learns of one layer; outlives the layer, which its on_clear deletes.
struct LayerLog {
  int on_clear = 0;
  bool saw_close = false;  // reader side of a record layer: its close record arrived
  bool failed = false;     // writer side of a fail layer: its wrap failed
};

struct Layer {
  sockTLC tlc{};
  Kind kind;
  uint8_t param;
  LayerLog* log;
  uint32_t sequence = 0;  // record: the next data record's (wrap) or the one expected (unwrap)
  unsigned records = 0;   // fail: records wrapped so far
  std::string pending;    // unwrap: input that is not a whole frame yet
  std::string held;       // unwrap: output beyond max_len
};

void put32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (24 - 8 * i));
}
uint32_t get32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(p[i]);
  return v;
}

FUZZ_NO_COVERAGE void xor_bytes(char* data, std::size_t n, uint8_t param) {
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<char>(data[i] ^ (param | 1));
}

// Run-length encodes in[0, n) into *out as (count, byte) pairs, giving up (false) once that
// is no shorter than n.
FUZZ_NO_COVERAGE bool rle_encode(const char* in, std::size_t n, std::string* out) {
  out->clear();
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i + 1;
    while (j < n && j - i < 255 && in[j] == in[i]) ++j;
    out->push_back(static_cast<char>(j - i));
    out->push_back(in[i]);
    if (out->size() >= n) return false;
    i = j;
  }
  return true;
}

// Appends the bytes of n bytes of (count, byte) pairs to *out; false unless they make `plain`
// bytes.
FUZZ_NO_COVERAGE bool rle_decode(const char* runs, std::size_t n, std::size_t plain,
                                 std::string* out) {
  if (n % 2) return false;
  std::size_t made = 0;
  for (std::size_t i = 0; i < n; i += 2) {
    const auto count = static_cast<unsigned char>(runs[i]);
    out->append(count, runs[i + 1]);
    made += count;
  }
  return made == plain;
}

// The packet a wrap is given: its bytes in its own memory, with room for `growth` more.
char* packet_with_room(Packet* p, std::size_t growth) {
  FUZZ_CHECK(p->buffer == p->internal_memory, "a layer was given a packet outside its memory");
  FUZZ_CHECK(
      static_cast<std::size_t>(p->length) + growth <= sizeof p->internal_memory,
      "a layer was given a packet without headroom: " + std::to_string(p->length) + " bytes");
  return p->internal_memory;
}

// A record frame of `type` around payload [at, at + n) of p, in place.
void frame(Packet* p, Layer* self, RecordType type) {
  const auto n = static_cast<std::size_t>(p->length);
  const uint32_t sequence = type == kData ? self->sequence++ : 0;
  const std::size_t padding = (sequence * 37u + self->param) % (self->param % kMaxPadding + 1);
  char* m = packet_with_room(p, kRecordHeader + padding);
  std::memmove(m + kRecordHeader, m, n);
  put32(m, static_cast<uint32_t>(n));
  put32(m + 4, sequence);
  m[8] = static_cast<char>(padding >> 8);
  m[9] = static_cast<char>(padding);
  m[10] = static_cast<char>(type);
  std::memset(m + kRecordHeader + n, 0x5a, padding);
  p->length = static_cast<ssize_t>(kRecordHeader + n + padding);
}

int wrap(int, Packet* p, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  switch (self->kind) {
    case Kind::kXor:
      xor_bytes(static_cast<char*>(p->buffer), static_cast<std::size_t>(p->length), self->param);
      return 0;
    case Kind::kRecord:
      frame(p, self, kData);
      return 0;
    case Kind::kRle: {
      const auto n = static_cast<std::size_t>(p->length);
      char* m = packet_with_room(p, kRleHeader);
      thread_local std::string runs;
      const bool compress = rle_encode(m, n, &runs);
      const std::size_t body = compress ? runs.size() : n;
      std::memmove(m + kRleHeader, compress ? runs.data() : m, body);
      put32(m, static_cast<uint32_t>(body));
      put32(m + 4, static_cast<uint32_t>(n));
      m[8] = compress ? 1 : 0;
      p->length = static_cast<ssize_t>(kRleHeader + body);
      return 0;
    }
    case Kind::kFail:
      if (++self->records == 1u + self->param % 8) {
        self->log->failed = true;
        return -1;
      }
      return 0;
  }
  return -1;
}

// Appends the plaintext of the whole frames in self->pending to self->held. False for input
// the writer's layer cannot have made.
bool unframe(Layer* self) {
  std::size_t at = 0;
  std::string& in = self->pending;
  const std::size_t header = self->kind == Kind::kRecord ? kRecordHeader : kRleHeader;
  while (in.size() - at >= header) {
    const char* h = in.data() + at;
    const uint32_t n = get32(h);
    if (n > BUFFER_PACKET_SIZE) return false;
    if (self->kind == Kind::kRecord) {
      const std::size_t padding =
          static_cast<unsigned char>(h[8]) << 8 | static_cast<unsigned char>(h[9]);
      if (in.size() - at - header < n + padding) break;
      if (self->log->saw_close) return false;  // nothing may follow the close record
      switch (static_cast<unsigned char>(h[10])) {
        case kData:
          if (get32(h + 4) != self->sequence++) return false;  // wrapped out of wire order
          self->held.append(h + header, n);
          break;
        case kPing:
          if (n != 0) return false;
          break;
        case kClose:
          if (n != 0) return false;
          self->log->saw_close = true;
          break;
        default:
          return false;
      }
      at += header + n + padding;
    } else {
      if (in.size() - at - header < n) break;
      const uint32_t plain = get32(h + 4);
      const char* body = h + header;
      if (h[8] == 0) {
        if (plain != n) return false;
        self->held.append(body, n);
      } else if (!rle_decode(body, n, plain, &self->held)) {
        return false;
      }
      at += header + n;
    }
  }
  in.erase(0, at);
  return true;
}

int unwrap(int, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  char* buf = static_cast<char*>(buffer);
  switch (self->kind) {
    case Kind::kXor:
      xor_bytes(buf, static_cast<std::size_t>(*len), self->param);
      return 0;
    case Kind::kFail:
      return 0;
    case Kind::kRecord:
    case Kind::kRle: {
      self->pending.append(buf, static_cast<std::size_t>(*len));
      if (!unframe(self)) return -1;
      const std::size_t out = std::min(self->held.size(), max_len);
      std::memcpy(buf, self->held.data(), out);
      self->held.erase(0, out);
      *len = static_cast<ssize_t>(out);
      return 0;
    }
  }
  return -1;
}

// A record of the layer's own (ping, close): framed by this layer, sent through the ones
// below it with sock_tlc_write.
void send_own_record(int fd, sockTLC* tlc, RecordType type) {
  Packet p{};
  p.buffer = p.internal_memory;
  frame(&p, static_cast<Layer*>(tlc->udata), type);
  FUZZ_CHECK(sock_tlc_write(fd, tlc, p.internal_memory, static_cast<std::size_t>(p.length)) == 0,
             "sock_tlc_write");
}

void say_close(int fd, sockTLC* tlc) { send_own_record(fd, tlc, kClose); }

void on_clear(int, sockTLC* tlc) {
  auto* self = static_cast<Layer*>(tlc->udata);
  ++self->log->on_clear;
  delete self;
}

// One input's run (reused, as in write_queue_fuzz, so that its buffers keep their memory).
class Run {
 public:
  explicit Run(engine_harness::Harness& h) : h_(h) {}

  // Reads the stack and the config from the input and opens both ends with their layers.
  void start(Input& in) {
    const std::size_t depth = 1 + in.byte() % kMaxLayers;
    kinds_.clear();
    for (std::size_t i = 0; i < depth; ++i) {
      const auto kind = static_cast<Kind>(in.byte() % kKinds);
      kinds_.push_back({kind, in.byte()});
    }
    const uint8_t config = in.byte();
    read_size_ = kReadSizes[config & 7];
    one_read_per_call_ = config & 8;
    // One loop iteration per sock_read: a few bytes at a time would take too long.
    if (one_read_per_call_) read_size_ = std::max<std::size_t>(read_size_, 4096);
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
               "socketpair");
    writer_ = sv[0];
    reader_ = sv[1];
    if (const int buffer = kSendBuffers[(config >> 4) & 3]) {
      testing_support::set_sndbuf(writer_, buffer);
    }
    logs_.assign(2 * depth, LayerLog{});
    for (const int fd : {writer_, reader_}) {
      FUZZ_CHECK(sock_open(h_.reactor(), fd) == 0, "sock_open");
      h_.watch(fd);
      for (std::size_t i = 0; i < depth; ++i) {
        auto* layer = new Layer;
        layer->kind = kinds_[i].first;
        layer->param = kinds_[i].second;
        layer->log = &logs_[(fd == writer_ ? 0 : depth) + i];
        layer->tlc.udata = layer;
        layer->tlc.wrap = wrap;
        layer->tlc.unwrap = unwrap;
        layer->tlc.on_clear = on_clear;
        // The writer's record layers end the stream with a close record. The reader's send none:
        // the reader closes after the writer's fd is gone, and a farewell written then fails
        // with EPIPE, which closes the reader with SOCK_CLOSE_ERROR instead of PEER.
        if (layer->kind == Kind::kRecord && fd == writer_) layer->tlc.before_close = say_close;
        FUZZ_CHECK(sock_tlc_add(fd, &layer->tlc) == 0, "sock_tlc_add");
      }
    }
    written_.clear();
    plaintext_.clear();
    total_ = 0;
    writes_ = 0;
    closing_ = forced_ = false;
  }

  void op(Input& in) {
    switch (in.byte() % 9) {
      case 0:
        copy(in.u16());
        break;
      case 1:
        move(in.u16());
        break;
      case 2:
        file(in);
        break;
      case 3:
        ping(in.byte());
        break;
      case 4:
        h_.turns(in.byte() % 4 + 1);
        break;
      case 5:
        if (!gone(writer_)) FUZZ_CHECK(sock_flush(writer_) >= 0 || failed(), "sock_flush");
        break;
      case 6:
        if (!closing_ && !gone(writer_)) {
          sock_close(h_.reactor(), writer_);
          closing_ = true;
        }
        break;
      case 7:
        if (!gone(writer_)) {
          forced_ = true;
          sock_force_close(h_.reactor(), writer_);
        }
        break;
      case 8: {
        const std::size_t n = in.u16();
        runs(n, static_cast<char>(in.byte()));
        break;
      }
    }
  }

  void finish() {
    if (!closing_ && !gone(writer_)) {
      sock_close(h_.reactor(), writer_);
      closing_ = true;
    }
    h_.drive_until([&] { return gone(writer_) && gone(reader_); }, "both ends to close");
    const bool complete = !forced_ && !failed();
    FUZZ_CHECK(plaintext_.size() <= written_.size() &&
                   written_.compare(0, plaintext_.size(), plaintext_) == 0,
               "the reader got " + std::to_string(plaintext_.size()) +
                   " bytes that are not a prefix of the " + std::to_string(written_.size()) +
                   " written; first difference at " +
                   std::to_string(testing_support::first_difference(plaintext_, written_)));
    FUZZ_CHECK(!complete || plaintext_.size() == written_.size(),
               "the reader got " + std::to_string(plaintext_.size()) + " of " +
                   std::to_string(written_.size()) + " bytes");
    FUZZ_CHECK(h_.closes(writer_) == 1 && h_.closes(reader_) == 1, "on_close once each");
    FUZZ_CHECK(h_.reason(writer_) == (failed() ? SOCK_CLOSE_ERROR : SOCK_CLOSE_LOCAL),
               "the writer's close reason " + std::to_string(h_.reason(writer_)));
    FUZZ_CHECK(h_.reason(reader_) == SOCK_CLOSE_PEER,
               "the reader's close reason " + std::to_string(h_.reason(reader_)));
    const std::size_t depth = kinds_.size();
    for (std::size_t i = 0; i < 2 * depth; ++i) {
      FUZZ_CHECK(logs_[i].on_clear == 1, "on_clear of layer " + std::to_string(i));
      if (complete && i >= depth && kinds_[i - depth].first == Kind::kRecord) {
        FUZZ_CHECK(logs_[i].saw_close, "no close record at layer " + std::to_string(i - depth));
      }
    }
  }

  // The reader's on_data.
  void on_data(int fd) {
    if (fd != reader_) return;
    buffer_.resize(read_size_);
    ssize_t n;
    do {
      n = sock_read(fd, buffer_.data(), buffer_.size());
      if (n > 0) plaintext_.append(buffer_.data(), static_cast<std::size_t>(n));
    } while (n > 0 && !one_read_per_call_);
  }

 private:
  bool gone(int fd) const { return h_.closes(fd) > 0; }
  bool failed() const {
    return std::any_of(logs_.begin(), logs_.end(), [](const LayerLog& l) { return l.failed; });
  }

  // Whether a write may be made (and must succeed): the writer is open and not closing.
  bool open_for_writes(ssize_t rc) {
    if (!closing_ && !gone(writer_) && !failed()) {
      FUZZ_CHECK(rc == 0, "a write failed: errno " + std::to_string(errno));
      return true;
    }
    FUZZ_CHECK(rc == -1, "a write after close succeeded");
    return false;
  }

  bool room(std::size_t n) {
    if (total_ + n > kMaxBytesPerRun) return false;
    total_ += n;
    return true;
  }

  void copy(std::size_t n) {
    if (!n || !room(n)) return;
    const std::string_view data = source(n, ++writes_);
    if (open_for_writes(sock_write(writer_, data.data(), n))) written_.append(data);
  }

  void runs(std::size_t n, char byte) {
    if (!n || !room(n)) return;
    const std::string data(n, byte);
    if (open_for_writes(sock_write(writer_, data.data(), n))) written_.append(data);
  }

  void move(std::size_t n) {
    if (!n || !room(n)) return;
    const std::string_view data = source(n, ++writes_);
    void* buffer = std::malloc(n);
    std::memcpy(buffer, data.data(), n);
    if (open_for_writes(sock_write2(.fd = writer_, .buffer = buffer, .length = n, .move = 1))) {
      written_.append(data);
    }
  }

  void file(Input& in) {
    const engine_harness::Files& f = engine_harness::files();
    const std::size_t i = in.byte() % f.paths.size();
    const std::string_view content = f.contents[i];
    const std::size_t offset = std::min<std::size_t>(std::size_t{in.u16()} * 4, content.size());
    const std::size_t length = in.u16();
    std::string_view rest = content.substr(offset);
    if (length) rest = rest.substr(0, length);
    if (!room(rest.size())) return;
    FILE* file = std::fopen(f.paths[i].c_str(), "rb");
    FUZZ_CHECK(file && fseeko(file, static_cast<off_t>(offset), SEEK_SET) == 0, f.paths[i]);
    // A length past the file's end fails the connection (libsock.h): ask for what it holds.
    const std::size_t asked = length ? rest.size() : 0;
    if (open_for_writes(sock_write2(.fd = writer_, .buffer = file, .length = asked, .file = 1))) {
      written_.append(rest);
    }
  }

  // A ping record from the n-th record layer (if there is one), wrapped by those below it.
  void ping(uint8_t n) {
    if (closing_ || gone(writer_) || failed()) return;
    sockTLC* layer = sock_tlc_get(writer_);
    std::vector<sockTLC*> records;
    for (; layer; layer = layer->next) {
      if (static_cast<Layer*>(layer->udata)->kind == Kind::kRecord) records.push_back(layer);
    }
    if (!records.empty()) send_own_record(writer_, records[n % records.size()], kPing);
  }

  engine_harness::Harness& h_;
  std::vector<std::pair<Kind, uint8_t>> kinds_;  // the stack, bottom first
  std::vector<LayerLog> logs_;                   // the writer's layers, then the reader's
  int writer_ = -1;
  int reader_ = -1;
  std::size_t read_size_ = 0;
  bool one_read_per_call_ = false;
  std::size_t total_ = 0;
  unsigned writes_ = 0;
  bool closing_ = false;
  bool forced_ = false;
  std::string written_;    // what the writer wrote, in order
  std::string plaintext_;  // what the reader read
  std::string buffer_;
};

Run* g_run = nullptr;

void on_data(struct Reactor*, int fd) { g_run->on_data(fd); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  engine_harness::Harness& h = engine_harness::Harness::get();
  if (!g_run) {
    g_run = new Run(h);
    h.set_on_data(on_data);
    engine_harness::files();
  }
  const int free_fd = fuzz_support::lowest_free_fd();
  Input in(data, size);
  g_run->start(in);
  while (!in.empty()) g_run->op(in);
  g_run->finish();
  h.check_nothing_left();
  FUZZ_CHECK(fuzz_support::lowest_free_fd() == free_fd, "fd leaked");
  return 0;
}
