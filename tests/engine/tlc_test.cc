// Transport Layer Callbacks (libsock.h): a toy stack of two layers, framing (lower: a 4-byte
// big-endian length, then the payload) under XOR (upper: every byte XOR a key), proves the
// order of wrap (head down) and unwrap (bottom up), reassembly of split frames, plaintext kept
// for the next sock_read, on_clear, before_close with sock_tlc_write, failing layers,
// .move/.file writes through layers, and what a TLS layer needs: records held until a
// handshake is done, the layer's own records in its wire order, and a stream that a layer
// ends (close_notify); also layers that change the chain from inside unwrap, and a
// before_close that closes the fd.
// Regressions: the seed applied unwrap in the same order as wrap (its "reverse" array was
// reversed twice), so a stack of two different layers could not read its own output. Output a
// layer held after the socket said EAGAIN waited for the peer to send again; freed layers were
// called after a layer replaced the chain; a before_close that closed the fd had it closed
// twice; a blocking fd blocked the read.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/block_watchdog.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::BlockWatchdog;
using testing_support::run_until;

constexpr unsigned char kKey = 0xA7;
constexpr std::size_t kHeader = 4;
// A frame longer than this is corrupt input (a misordered unwrap reads XORed header bytes as
// a length of about 2.8 GB).
constexpr uint32_t kMaxFrame = 1 << 20;

// What the test observes of one layer; outlives the layer, which on_clear deletes.
struct LayerLog {
  int on_clear = 0;
  int on_clear_fd = -1;
  int before_close = 0;
  int unwrap_calls = 0;
  bool held_partial = false;  // framing: kept an incomplete frame between calls
  int holds = 0;              // holding, handshake: wrap calls that held the record
};

enum class Kind {
  kFraming, kFramingSayingBye, kXor, kXorSayingBye, kReject, kRejectWrap, kExpand, kSequenced,
  kCloseInUnwrap, kHolding, kHoldingSayingBye, kAnnouncing, kHandshake, kEnding,
  kStripping, kSwitching, kPushing, kForceClosingOnClose, kRemovingOnClose
};

// kExpand turns every input byte into this many copies, so that one read's output exceeds
// max_len and the layer must hold the rest (as a decompressor would).
constexpr std::size_t kExpandFactor = 100;

// One layer: the sockTLC the engine sees, and the layer's own state (its udata).
struct Layer {
  sockTLC tlc{};
  Kind kind;
  LayerLog* log;
  std::string pending;  // framing: input that is not a whole frame yet
  std::string held;     // framing, expand: output that did not fit max_len
  unsigned records = 0;  // sequenced, announcing: records wrapped so far
  bool holding = true;   // holding: wrap holds every record while set (the test clears it)
  bool hello_sent = false;  // handshake: the first wrap queued HELLO
  bool ready = false;       // handshake: the peer's WELCOME came
  bool ended = false;       // ending: the end marker came
  bool header_done = false;      // stripping, switching, pushing: the header line came
  LayerLog* installs = nullptr;  // switching, pushing: the log of the XOR layer it installs
};

// Every Layer not freed yet (its on_clear), so that TlcTest's TearDown can point their logs
// away from the test body's locals before its stop runs their hooks.
std::set<Layer*>& live_layers() {
  static std::set<Layer*> layers;
  return layers;
}

void put_be32(char* out, uint32_t v) {
  out[0] = static_cast<char>(v >> 24);
  out[1] = static_cast<char>(v >> 16);
  out[2] = static_cast<char>(v >> 8);
  out[3] = static_cast<char>(v);
}

uint32_t get_be32(const char* in) {
  const auto* u = reinterpret_cast<const unsigned char*>(in);
  return uint32_t{u[0]} << 24 | uint32_t{u[1]} << 16 | uint32_t{u[2]} << 8 | u[3];
}

void xor_bytes(char* data, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<char>(data[i] ^ kKey);
}

int framing_wrap(int, Packet* p, void*) {
  // The engine hands layers packets whose payload sits in internal_memory, with headroom.
  if (p->buffer != p->internal_memory) return -1;
  const auto n = static_cast<std::size_t>(p->length);
  if (n + kHeader > sizeof p->internal_memory) return -1;
  std::memmove(p->internal_memory + kHeader, p->internal_memory, n);
  put_be32(p->internal_memory, static_cast<uint32_t>(n));
  p->length = static_cast<ssize_t>(n + kHeader);
  return 0;
}

// Appends the input to what it kept, turns every whole frame into payload, keeps the rest;
// outputs at most max_len bytes and keeps the remainder for the next call (with *len == 0).
int framing_unwrap(int, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  ++self->log->unwrap_calls;
  char* buf = static_cast<char*>(buffer);
  self->pending.append(buf, static_cast<std::size_t>(*len));
  std::size_t at = 0;
  while (self->pending.size() - at >= kHeader) {
    const uint32_t n = get_be32(self->pending.data() + at);
    if (n > kMaxFrame) return -1;
    if (self->pending.size() - at - kHeader < n) break;
    self->held.append(self->pending, at + kHeader, n);
    at += kHeader + n;
  }
  self->pending.erase(0, at);
  if (!self->pending.empty()) self->log->held_partial = true;
  const std::size_t out = std::min(self->held.size(), max_len);
  std::memcpy(buf, self->held.data(), out);
  self->held.erase(0, out);
  *len = static_cast<ssize_t>(out);
  return 0;
}

int xor_wrap(int, Packet* p, void*) {
  xor_bytes(static_cast<char*>(p->buffer), static_cast<std::size_t>(p->length));
  return 0;
}

int xor_unwrap(int, void* buffer, ssize_t* len, const size_t, void* udata) {
  ++static_cast<Layer*>(udata)->log->unwrap_calls;
  xor_bytes(static_cast<char*>(buffer), static_cast<std::size_t>(*len));
  return 0;
}

int reject_unwrap(int, void*, ssize_t*, const size_t, void* udata) {
  ++static_cast<Layer*>(udata)->log->unwrap_calls;
  return -1;
}

int reject_wrap(int, Packet*, void*) { return -1; }

// A layer that gives up on the connection from inside unwrap (as a TLS layer might on a fatal
// alert) and reports success: the close frees this layer (on_clear), so it is not touched
// afterwards.
int close_unwrap(int fd, void*, ssize_t*, const size_t, void* udata) {
  ++static_cast<Layer*>(udata)->log->unwrap_calls;
  sock_force_close(nullptr, fd);
  return 0;
}

// Like TLS, whose records carry sequence numbers: record k (from 1) is XORed with k, so the
// peer can decode the records only if they were wrapped in the order they go on the wire.
int sequenced_wrap(int, Packet* p, void* udata) {
  const auto key = static_cast<char>(++static_cast<Layer*>(udata)->records);
  char* data = static_cast<char*>(p->buffer);
  for (ssize_t i = 0; i < p->length; ++i) data[i] = static_cast<char>(data[i] ^ key);
  return 0;
}

int expand_unwrap(int, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  ++self->log->unwrap_calls;
  char* buf = static_cast<char*>(buffer);
  for (ssize_t i = 0; i < *len; ++i) self->held.append(kExpandFactor, buf[i]);
  const std::size_t out = std::min(self->held.size(), max_len);
  std::memcpy(buf, self->held.data(), out);
  self->held.erase(0, out);
  if (!self->held.empty()) self->log->held_partial = true;
  *len = static_cast<ssize_t>(out);
  return 0;
}

// Holds every record while `holding` (a TLS layer before its handshake is done), leaving the
// packet as it is; then XORs like kXor.
int holding_wrap(int fd, Packet* p, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  if (self->holding) {
    ++self->log->holds;
    return 1;
  }
  return xor_wrap(fd, p, udata);
}

// What a layer queues on its own from inside wrap (a TLS ClientHello before the first record).
constexpr char kHello[] = "HELLO";
constexpr char kWelcome[] = "WELCOME";

constexpr char kPing[] = "PING";

// Sequenced, but from inside wrap it queues records of its own: HELLO before its first record,
// PING before its third (a TLS key update), and then wraps the record.
int announcing_wrap(int fd, Packet* p, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  if (self->records == 0) {
    EXPECT_EQ(sock_tlc_write(fd, &self->tlc, kHello, std::strlen(kHello)), 0);
  } else if (self->records == 2) {
    EXPECT_EQ(sock_tlc_write(fd, &self->tlc, kPing, std::strlen(kPing)), 0);
  }
  return sequenced_wrap(fd, p, udata);
}

// A toy TLS client: its first wrap queues HELLO and every wrap holds the record until the
// peer's WELCOME is unwrapped; then unwrap asks for the flush (sock_tlc_write with no data)
// and the layer XORs like kXor.
int handshake_wrap(int fd, Packet* p, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  if (!self->hello_sent) {
    self->hello_sent = true;
    EXPECT_EQ(sock_tlc_write(fd, &self->tlc, kHello, std::strlen(kHello)), 0);
  }
  if (!self->ready) {
    ++self->log->holds;
    return 1;
  }
  return xor_wrap(fd, p, udata);
}

int handshake_unwrap(int fd, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  if (self->ready) return xor_unwrap(fd, buffer, len, max_len, udata);
  ++self->log->unwrap_calls;
  if (*len == 0) return 0;
  if (std::string(static_cast<char*>(buffer), static_cast<std::size_t>(*len)) != kWelcome) {
    return -1;
  }
  self->ready = true;
  *len = 0;
  return sock_tlc_write(fd, &self->tlc, nullptr, 0);
}

// Passes input through until the end marker (a TLS close_notify): the bytes before it are its
// last output, and it returns 1 once, on that call; what follows the marker is dropped.
constexpr char kEnd[] = "<END>";

int ending_unwrap(int, void* buffer, ssize_t* len, const size_t, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  ++self->log->unwrap_calls;
  if (self->ended) {
    *len = 0;
    return 0;
  }
  const std::string_view in(static_cast<char*>(buffer), static_cast<std::size_t>(*len));
  const std::size_t end = in.find(kEnd);
  if (end == std::string_view::npos) return 0;
  self->ended = true;
  *len = static_cast<ssize_t>(end);
  return 1;
}

sockTLC* make_layer(Kind kind, LayerLog* log);

// Consumes a header line (up to '\n', as a PROXY protocol header would be) and then changes the
// chain from inside unwrap: kStripping removes every layer (itself included), kSwitching
// replaces the chain with an XOR layer, kPushing pushes an XOR layer on top of itself. Its
// output in that call is what followed the header; afterwards (kPushing: the others are gone)
// it passes input through.
int header_unwrap(int fd, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* self = static_cast<Layer*>(udata);
  ++self->log->unwrap_calls;
  if (self->header_done) return 0;
  char* buf = static_cast<char*>(buffer);
  self->pending.append(buf, static_cast<std::size_t>(*len));
  const std::size_t eol = self->pending.find('\n');
  if (eol == std::string::npos) {
    *len = 0;
    return 0;
  }
  self->header_done = true;
  const std::size_t rest = std::min(self->pending.size() - eol - 1, max_len);
  std::memcpy(buf, self->pending.data() + eol + 1, rest);
  *len = static_cast<ssize_t>(rest);
  // sock_tlc_set frees this layer (on_clear): nothing of it is touched afterwards.
  switch (self->kind) {
    case Kind::kStripping:
      return sock_tlc_set(fd, nullptr);
    case Kind::kSwitching:
      return sock_tlc_set(fd, make_layer(Kind::kXor, self->installs));
    default:
      return sock_tlc_add(fd, make_layer(Kind::kXor, self->installs));
  }
}

// Closes the fd at once from inside its graceful close (a layer giving up on a peer that
// will not answer its close_notify).
void force_close_on_close(int fd, sockTLC* tlc) {
  ++static_cast<Layer*>(tlc->udata)->log->before_close;
  sock_force_close(nullptr, fd);
}

// Removes the layers from inside the graceful close (on_clear frees this one); the close goes on.
void remove_layers_on_close(int fd, sockTLC* tlc) {
  ++static_cast<Layer*>(tlc->udata)->log->before_close;
  EXPECT_EQ(sock_tlc_set(fd, nullptr), 0);
}

void layer_on_clear(int fd, sockTLC* tlc) {
  auto* self = static_cast<Layer*>(tlc->udata);
  ++self->log->on_clear;
  self->log->on_clear_fd = fd;
  live_layers().erase(self);
  delete self;
}

// A final record, as a TLS close_notify would be: wrapped by the layers below this one only.
void say_bye(int fd, sockTLC* tlc) {
  ++static_cast<Layer*>(tlc->udata)->log->before_close;
  EXPECT_EQ(sock_tlc_write(fd, tlc, "BYE", 3), 0);
}

sockTLC* make_layer(Kind kind, LayerLog* log) {
  auto* layer = new Layer;
  live_layers().insert(layer);
  layer->kind = kind;
  layer->log = log;
  layer->tlc.udata = layer;
  layer->tlc.on_clear = layer_on_clear;
  switch (kind) {
    case Kind::kFramingSayingBye:
      layer->tlc.before_close = say_bye;
      [[fallthrough]];
    case Kind::kFraming:
      layer->tlc.wrap = framing_wrap;
      layer->tlc.unwrap = framing_unwrap;
      break;
    case Kind::kXorSayingBye:
      layer->tlc.before_close = say_bye;
      [[fallthrough]];
    case Kind::kXor:
      layer->tlc.wrap = xor_wrap;
      layer->tlc.unwrap = xor_unwrap;
      break;
    case Kind::kReject:
      layer->tlc.unwrap = reject_unwrap;
      break;
    case Kind::kRejectWrap:
      layer->tlc.wrap = reject_wrap;
      break;
    case Kind::kExpand:
      layer->tlc.unwrap = expand_unwrap;
      break;
    case Kind::kSequenced:
      layer->tlc.wrap = sequenced_wrap;
      break;
    case Kind::kCloseInUnwrap:
      layer->tlc.unwrap = close_unwrap;
      break;
    case Kind::kHoldingSayingBye:
      layer->tlc.before_close = say_bye;
      [[fallthrough]];
    case Kind::kHolding:
      layer->tlc.wrap = holding_wrap;
      layer->tlc.unwrap = xor_unwrap;
      break;
    case Kind::kAnnouncing:
      layer->tlc.wrap = announcing_wrap;
      break;
    case Kind::kHandshake:
      layer->tlc.wrap = handshake_wrap;
      layer->tlc.unwrap = handshake_unwrap;
      break;
    case Kind::kEnding:
      layer->tlc.unwrap = ending_unwrap;
      layer->tlc.before_close = say_bye;
      break;
    case Kind::kStripping:
    case Kind::kSwitching:
    case Kind::kPushing:
      layer->tlc.unwrap = header_unwrap;
      break;
    case Kind::kForceClosingOnClose:
      layer->tlc.before_close = force_close_on_close;
      break;
    case Kind::kRemovingOnClose:
      layer->tlc.before_close = remove_layers_on_close;
      break;
  }
  return &layer->tlc;
}

// The toy stack on fd: framing first (lowest), XOR (or upper_kind) pushed on top of it (the
// head, stored in *head if asked for: tests that drive the layer themselves need it).
void add_stack(int fd, LayerLog* framing, LayerLog* upper, Kind upper_kind = Kind::kXor,
               sockTLC** head = nullptr) {
  ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, framing)), 0);
  sockTLC* layer = make_layer(upper_kind, upper);
  if (head) *head = layer;
  ASSERT_EQ(sock_tlc_add(fd, layer), 0);
}

// An on_accept that pushes one layer of `kind` on the accepted fd.
std::function<void(int)> push_layer(Kind kind, LayerLog* log) {
  return [kind, log](int fd) { ASSERT_EQ(sock_tlc_add(fd, make_layer(kind, log)), 0); };
}

// What the framing layer puts on the wire for one record.
std::string framed(const std::string& data) {
  std::string wire(kHeader, '\0');
  put_be32(wire.data(), static_cast<uint32_t>(data.size()));
  return wire + data;
}

std::string xored(std::string s) {
  xor_bytes(s.data(), s.size());
  return s;
}

// What the stack puts on the wire for one record: frame(xor(data)).
std::string encode(const std::string& data) { return framed(xored(data)); }

// What the expanding layer makes of its input.
std::string expanded(const std::string& in) {
  std::string out;
  for (const char c : in) out.append(kExpandFactor, c);
  return out;
}

// What the sequenced layer makes of its k-th record (from 1).
std::string sequenced(unsigned k, std::string s) {
  for (char& c : s) c = static_cast<char>(c ^ static_cast<char>(k));
  return s;
}

// Splits a raw byte stream into frame payloads (not XOR-decoded). Returns false if the
// stream ends inside a frame.
bool deframe(const std::string& wire, std::vector<std::string>* frames) {
  std::size_t at = 0;
  while (wire.size() - at >= kHeader) {
    const uint32_t n = get_be32(wire.data() + at);
    if (wire.size() - at - kHeader < n) return false;
    frames->push_back(wire.substr(at + kHeader, n));
    at += kHeader + n;
  }
  return at == wire.size();
}

// The payload of the first `count` frames, each one record XORed (one packet's worth at most).
std::string xored_records(const std::vector<std::string>& frames, std::size_t count) {
  std::string payload;
  for (std::size_t i = 0; i < count; ++i) {
    EXPECT_LE(frames[i].size(), static_cast<std::size_t>(BUFFER_FILE_READ_SIZE));
    payload += xored(frames[i]);
  }
  return payload;
}

// EXPECT_EQ for byte strings of any length: a long one is not printed, where it first differs is.
void expect_bytes(const std::string& got, const std::string& expected) {
  constexpr std::size_t kPrintable = 256;
  if (got.size() <= kPrintable && expected.size() <= kPrintable) {
    EXPECT_EQ(got, expected);
    return;
  }
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "first difference at byte "
                               << testing_support::first_difference(got, expected);
}

// A temporary file holding `data`, its offset at `offset` (where a .file write starts).
void temp_file(const std::string& data, long offset, FILE** file) {
  *file = tmpfile();
  ASSERT_NE(*file, nullptr);
  ASSERT_EQ(fwrite(data.data(), 1, data.size(), *file), data.size());
  ASSERT_EQ(fflush(*file), 0);
  ASSERT_EQ(fseek(*file, offset, SEEK_SET), 0);
}

// --- The reactor side ------------------------------------------------------------------------

struct Conn {
  std::string in;
  std::vector<std::pair<ssize_t, int>> reads;  // (result, errno) of each sock_read
  bool eof = false;
  int on_data_calls = 0;
};

struct World {
  std::map<int, Conn> conns;
  std::function<void(int)> on_accept;     // installs layers, writes
  std::function<void(int)> on_conn_data;  // replaces the default read_everything
};

class TlcTest : public testing_support::ServerFixture {
 protected:
  // The hooks and the layers' logs point into the test body's frame, which has ended: the
  // stop's callbacks (for connections a failed ASSERT left open) must not write there.
  void TearDown() override {
    w_.on_accept = nullptr;
    w_.on_conn_data = nullptr;
    for (Layer* layer : live_layers()) {
      layer->log = &orphaned_;
      if (layer->installs) layer->installs = &orphaned_;
    }
    ServerFixture::TearDown();
  }

  // Runs the reactor until `server` has read `bytes` or its peer's EOF.
  bool run_until_received(int server, std::size_t bytes) {
    const Conn& c = w_.conns[server];
    return run_until(&r_, [&] { return c.in.size() >= bytes || c.eof; });
  }

  void on_accept(int fd) override {
    w_.conns[fd] = Conn{};
    if (w_.on_accept) w_.on_accept(fd);
  }

  void on_connection_data(int fd) override {
    ++w_.conns[fd].on_data_calls;
    if (w_.on_conn_data) {
      w_.on_conn_data(fd);
    } else {
      read_everything(fd);
    }
  }

  // sock_read with a `buffer`-byte buffer until it gives 0 (drained) or -1 (logged, EOF).
  void read_everything(int fd, std::size_t buffer = 64 * 1024) {
    Conn& c = w_.conns[fd];
    std::vector<char> buf(buffer);
    for (;;) {
      errno = 0;
      const ssize_t n = sock_read(fd, buf.data(), buf.size());
      if (n > 0) {
        c.in.append(buf.data(), static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0) {
        c.reads.push_back({n, errno});
        c.eof = true;
      }
      return;
    }
  }

  // An on_conn_data that makes `count` sock_reads of up to `size` bytes per call and logs each
  // (result, errno) in the connection's reads, keeping none of the data.
  std::function<void(int)> log_reads(std::size_t size, int count) {
    return [this, size, count](int fd) {
      std::vector<char> buf(size);
      for (int i = 0; i < count; ++i) {
        errno = 0;
        const ssize_t n = sock_read(fd, buf.data(), buf.size());
        w_.conns[fd].reads.push_back({n, errno});
      }
    };
  }

  // Runs r_ until `log`'s layer (holder, which on_accept installed) held a record, then a few
  // iterations more, in which nothing may reach the client (a loopback send is in the peer's
  // buffer when sendmsg returns).
  void expect_held(const LayerLog& log, const sockTLC* holder, int client) {
    ASSERT_NE(holder, nullptr);
    ASSERT_TRUE(run_until(&r_, [&] { return log.holds > 0; }));
    settle();
    std::string got;
    EXPECT_TRUE(testing_support::drain(client, &got));  // not closed either
    EXPECT_EQ(got, "");
  }

  // Reads client into *wire until it holds as many bytes as `expected`, runs a few iterations
  // more, and checks that *wire is `expected`: nothing followed it, and no close.
  void expect_wire(int client, std::string* wire, const std::string& expected) {
    ASSERT_TRUE(read_at_least(client, wire, expected.size()));
    settle();
    EXPECT_TRUE(testing_support::drain(client, wire));
    expect_bytes(*wire, expected);
  }

  // The connection's sock_reads ended in one EOF (-1 with errno 0) and never failed.
  void expect_one_eof(int fd) {
    ASSERT_EQ(w_.conns[fd].reads.size(), 1u);
    EXPECT_EQ(w_.conns[fd].reads[0], std::make_pair(ssize_t{-1}, 0));
  }

  // Runs r_ until an fd closed, then a few iterations more: `fd` closed, once, and nothing else.
  void expect_closed_once(int fd) {
    ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
    settle();
    EXPECT_EQ(closed_, std::vector<int>{fd});
  }

  // Closes the plain client and runs r_ until the server side closed too (the test's first
  // close).
  void close_and_wait(int client) {
    close(client);
    ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
  }

  World w_;
  LayerLog orphaned_;  // the logs of the layers still alive at TearDown
};

// The holding layer can wrap now: it asks for the flush that sends what it held.
void release(int fd, sockTLC* holder) {
  static_cast<Layer*>(holder->udata)->holding = false;
  EXPECT_EQ(sock_tlc_write(fd, holder, nullptr, 0), 0);
}

TEST_F(TlcTest, TenMegabytesEachWayThroughXorOverFramingArriveIntact) {
  constexpr std::size_t kBytes = 10 * 1024 * 1024;
  const std::string to_client = testing_support::pattern(kBytes, 21);
  const std::string to_server = testing_support::pattern(kBytes, 22);
  LayerLog server_framing, server_xor, client_framing, client_xor;
  int server = -1;
  // Each side queues its whole 10 MB before reading: under the default 1 MiB watermark both
  // would stop reading and wait for each other, so both raise theirs above the transfer.
  constexpr std::size_t kHigh = 4 * kBytes;
  w_.on_accept = [&](int fd) {
    server = fd;
    add_stack(fd, &server_framing, &server_xor);
    EXPECT_EQ(sock_set_watermarks(fd, kHigh, kHigh / 4), 0);
    EXPECT_EQ(sock_write(fd, to_client.data(), to_client.size()), 0);
  };
  // The client is a second sock_ connection on the same reactor, with the same stack; its
  // write is queued (and wrapped) before the connect completes.
  const int client = sock_connect(&r_, "127.0.0.1", std::to_string(listener_.port).c_str());
  ASSERT_GE(client, 0);
  add_stack(client, &client_framing, &client_xor);
  ASSERT_EQ(sock_set_watermarks(client, kHigh, kHigh / 4), 0);
  ASSERT_EQ(sock_write(client, to_server.data(), to_server.size()), 0);

  ASSERT_TRUE(run_until(
      &r_,
      [&] {
        // A connection that failed (a layer rejected its input) ends the wait early.
        return (server >= 0 && w_.conns[server].in.size() >= kBytes &&
                w_.conns[client].in.size() >= kBytes) ||
               w_.conns[client].eof || (server >= 0 && w_.conns[server].eof);
      },
      std::chrono::seconds(60)));
  EXPECT_TRUE(w_.conns[client].reads.empty());
  EXPECT_TRUE(w_.conns[server].reads.empty());
  expect_bytes(w_.conns[server].in, to_server);
  expect_bytes(w_.conns[client].in, to_client);
  // 17 KB reads against 16 KB + 4 frames: frames were split across reads and reassembled.
  EXPECT_TRUE(server_framing.held_partial);
  EXPECT_TRUE(client_framing.held_partial);

  sock_close(&r_, client);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 2; }));
  for (const LayerLog* log : {&server_framing, &server_xor, &client_framing, &client_xor}) {
    EXPECT_EQ(log->on_clear, 1);
  }
}

TEST_F(TlcTest, OnTheWireXorIsAppliedBeforeFramingAndUnwrapUndoesItBottomUp) {
  LayerLog framing, upper;
  w_.on_accept = [&](int fd) {
    add_stack(fd, &framing, &upper);
    EXPECT_EQ(sock_write(fd, "hello, layers", 13), 0);
  };
  int server;
  const int client = connect_and_accept(&server);

  // Wrap runs head (XOR) down to framing: the length header is in the clear, the body XORed.
  std::string wire;
  ASSERT_TRUE(read_at_least(client, &wire, kHeader + 13));
  const std::string expected = encode("hello, layers");
  EXPECT_EQ(wire, expected);
  EXPECT_EQ(wire.substr(0, kHeader), std::string("\0\0\0\x0d", 4));

  // Unwrap runs bottom up: framing first (reassembling a frame split over three reads), then
  // XOR. In the seed's order XOR would scramble the header into a 2.8 GB length.
  const std::string msg = "ping from a raw client";
  const std::string frame = encode(msg);
  const std::size_t cuts[] = {0, 2, 7, frame.size()};
  for (int i = 0; i < 3; ++i) {
    const int calls = framing.unwrap_calls;
    testing_support::write_all(client, frame.substr(cuts[i], cuts[i + 1] - cuts[i]));
    ASSERT_TRUE(run_until(&r_, [&] {
      return framing.unwrap_calls > calls || w_.conns[server].eof;
    }));
    ASSERT_FALSE(w_.conns[server].eof);
    if (i < 2) {
      EXPECT_EQ(w_.conns[server].in, "");  // nothing whole yet: the layer keeps it
    }
  }
  ASSERT_TRUE(run_until_received(server, msg.size()));
  EXPECT_EQ(w_.conns[server].in, msg);
  EXPECT_TRUE(framing.held_partial);
  EXPECT_TRUE(w_.conns[server].reads.empty());  // no error, no EOF
  close_and_wait(client);
}

TEST_F(TlcTest, PlaintextBeyondTheCallersBufferIsKeptForTheNextRead) {
  LayerLog framing, upper;
  w_.on_accept = [&](int fd) { add_stack(fd, &framing, &upper); };
  std::vector<ssize_t> results;
  // One 7-byte read per on_data call: the engine must call on_data again while plaintext
  // waits, although no new bytes arrive from the socket.
  w_.on_conn_data = [&](int fd) {
    char buf[7];
    const ssize_t n = sock_read(fd, buf, sizeof buf);
    results.push_back(n);
    if (n > 0) w_.conns[fd].in.append(buf, static_cast<std::size_t>(n));
    if (n < 0) w_.conns[fd].eof = true;
  };
  int server;
  const int client = connect_and_accept(&server);
  const std::string a = testing_support::pattern(10000, 31);
  const std::string b = "!";
  const std::string c = testing_support::pattern(5000, 32);
  testing_support::write_all(client, encode(a) + encode(b) + encode(c));
  const std::string all = a + b + c;

  ASSERT_TRUE(run_until_received(server, all.size()));
  EXPECT_TRUE(w_.conns[server].in == all);
  std::size_t positive = 0;
  for (const ssize_t n : results) {
    EXPECT_GE(n, 0);
    EXPECT_LE(n, 7);
    if (n > 0) ++positive;
  }
  EXPECT_GE(positive, (all.size() + 6) / 7);
  EXPECT_GE(w_.conns[server].on_data_calls, static_cast<int>((all.size() + 6) / 7));
  close(client);
  w_.on_conn_data = nullptr;  // read the EOF so the connection closes
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
}

TEST_F(TlcTest, OnClearRunsOnceForEveryLayerOnCloseAndWhenTheChainIsReplaced) {
  LayerLog a_framing, a_xor, b_framing, b_xor, c_framing, c_xor;
  w_.on_accept = [&](int fd) { add_stack(fd, &a_framing, &a_xor); };
  int server;
  const int client = connect_and_accept(&server);

  // Replacing the chain clears the old one, once per layer, and only the old one.
  sockTLC* b_low = make_layer(Kind::kFraming, &b_framing);
  sockTLC* b_high = make_layer(Kind::kXor, &b_xor);
  b_high->next = b_low;
  ASSERT_EQ(sock_tlc_set(server, b_high), 0);
  EXPECT_EQ(sock_tlc_get(server), b_high);
  EXPECT_EQ(a_framing.on_clear, 1);
  EXPECT_EQ(a_xor.on_clear, 1);
  EXPECT_EQ(a_framing.on_clear_fd, server);
  EXPECT_EQ(b_framing.on_clear, 0);
  EXPECT_EQ(b_xor.on_clear, 0);

  // The new chain is the one in use.
  testing_support::write_all(client, encode("via chain b"));
  ASSERT_TRUE(run_until_received(server, 11));
  EXPECT_EQ(w_.conns[server].in, "via chain b");

  // The peer closes: the fd closes and every layer of the current chain is cleared once.
  close(client);
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(b_framing.on_clear, 1);
  EXPECT_EQ(b_xor.on_clear, 1);
  EXPECT_EQ(b_xor.on_clear_fd, server);
  EXPECT_EQ(a_framing.on_clear, 1);
  EXPECT_EQ(a_xor.on_clear, 1);

  // A forced close clears the layers too.
  w_.on_accept = [&](int fd) { add_stack(fd, &c_framing, &c_xor); };
  int server2;
  const int client2 = connect_and_accept(&server2);
  sock_force_close(&r_, server2);
  EXPECT_EQ(c_framing.on_clear, 1);
  EXPECT_EQ(c_xor.on_clear, 1);
  settle();
  EXPECT_EQ(closed_.size(), 2u);
  EXPECT_EQ(c_framing.on_clear, 1);
  EXPECT_EQ(c_xor.on_clear, 1);
  close(client2);

  // sock_clear releases the sock_ state of an fd that stays open: the layers are cleared
  // then, and not again when the fd is finally closed.
  LayerLog d_framing, d_xor;
  w_.on_accept = [&](int fd) { add_stack(fd, &d_framing, &d_xor); };
  int server3;
  const int client3 = connect_and_accept(&server3);
  sock_clear(server3);
  EXPECT_EQ(d_framing.on_clear, 1);
  EXPECT_EQ(d_xor.on_clear, 1);
  EXPECT_EQ(sock_tlc_get(server3), nullptr);
  reactor_close(&r_, server3);
  settle();
  EXPECT_EQ(closed_.size(), 3u);
  EXPECT_EQ(d_framing.on_clear, 1);
  EXPECT_EQ(d_xor.on_clear, 1);
  close(client3);
}

TEST_F(TlcTest, BeforeCloseQueuesAFramedByeAfterAllDataThenTheFdCloses) {
  const std::string data = testing_support::pattern(300 * 1024 + 5, 41);
  LayerLog framing, upper;
  w_.on_accept = [&](int fd) {
    add_stack(fd, &framing, &upper, Kind::kXorSayingBye);
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    sock_close(&r_, fd);
    EXPECT_EQ(upper.before_close, 0);  // only once the queue has drained
  };
  int server;
  const int client = connect_and_accept(&server);
  const std::string wire = read_to_eof(client);

  std::vector<std::string> frames;
  ASSERT_TRUE(deframe(wire, &frames));
  ASSERT_GE(frames.size(), 2u);
  // The data, every record XORed and framed, then BYE: framed only (sock_tlc_write from the
  // XOR layer is wrapped by the layers below it), then EOF.
  expect_bytes(xored_records(frames, frames.size() - 1), data);
  EXPECT_EQ(frames.back(), "BYE");
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(upper.before_close, 1);
  EXPECT_EQ(framing.on_clear, 1);
  EXPECT_EQ(upper.on_clear, 1);
  close(client);
}

TEST_F(TlcTest, FailingUnwrapMakesSockReadFailWithEprotoAndClosesTheFdOnce) {
  LayerLog framing, reject;
  w_.on_accept = [&](int fd) {
    add_stack(fd, &framing, &reject, Kind::kReject);
  };
  w_.on_conn_data = log_reads(64, 2);  // the failure sticks: asking again gives the same answer
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, encode("anything"));
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  const auto& reads = w_.conns[server].reads;
  ASSERT_EQ(reads.size(), 2u);
  for (const auto& [n, err] : reads) {
    EXPECT_EQ(n, -1);
    EXPECT_EQ(err, EPROTO);
  }
  EXPECT_EQ(reject.unwrap_calls, 1);
  EXPECT_EQ(framing.on_clear, 1);
  EXPECT_EQ(reject.on_clear, 1);
  std::string rest;
  EXPECT_FALSE(testing_support::drain(client, &rest));  // the peer sees the close
  EXPECT_EQ(rest, "");
  close(client);
}

TEST_F(TlcTest, UnwrapThatClosesTheFdEndsTheReadWithEbadfAndClosesOnce) {
  LayerLog framing, closing;
  w_.on_accept = [&](int fd) { add_stack(fd, &framing, &closing, Kind::kCloseInUnwrap); };
  // Reads smaller than the record: the rest would be kept, in state the close freed.
  w_.on_conn_data = log_reads(4, 1);
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, encode("anything"));
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  const auto& reads = w_.conns[server].reads;
  ASSERT_EQ(reads.size(), 1u);
  EXPECT_EQ(reads[0].first, -1);
  EXPECT_EQ(reads[0].second, EBADF);
  EXPECT_EQ(closing.unwrap_calls, 1);
  EXPECT_EQ(framing.on_clear, 1);
  EXPECT_EQ(closing.on_clear, 1);
  close(client);
}

// Records are wrapped when they are sent, after sock_write has returned: the write is queued
// (0), and the failure closes the connection at the flush step without sending anything.
TEST_F(TlcTest, FailingWrapClosesTheFdOnceWithoutSendingAnything) {
  LayerLog reject;
  int write_result = 0;
  int write_errno = 0;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kRejectWrap, &reject)), 0);
    errno = 0;
    write_result = static_cast<int>(sock_write(fd, "data", 4));
    write_errno = errno;
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(write_result, 0);
  EXPECT_EQ(write_errno, 0);
  EXPECT_EQ(reject.on_clear, 1);
  std::string rest;
  EXPECT_FALSE(testing_support::drain(client, &rest));  // closed, nothing half-wrapped sent
  EXPECT_EQ(rest, "");
  close(client);
}

TEST_F(TlcTest, OutputALayerHoldsBeyondMaxLenIsDeliveredBeforeEof) {
  LayerLog expand;
  w_.on_accept = push_layer(Kind::kExpand, &expand);
  int server;
  const int client = connect_and_accept(&server);
  const std::string sent = testing_support::pattern(2000, 71);
  testing_support::write_all(client, sent);
  ASSERT_EQ(shutdown(client, SHUT_WR), 0);  // EOF right behind the data
  ASSERT_TRUE(run_until(&r_, [&] { return w_.conns[server].eof; }));

  EXPECT_TRUE(expand.held_partial);  // 200,000 bytes of output: more than one max_len
  expect_bytes(w_.conns[server].in, expanded(sent));
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));  // then EOF
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
  close(client);
}

TEST_F(TlcTest, MovedBufferAndFileAreWrappedIntoRecordsAndArriveIntact) {
  const std::string moved = testing_support::pattern(100 * 1024 + 7, 51);
  const std::string file_data = testing_support::pattern(3 * BUFFER_FILE_READ_SIZE + 123, 52);
  constexpr long kFileStart = 10;  // .file sends from the FILE*'s current offset
  FILE* file = nullptr;
  ASSERT_NO_FATAL_FAILURE(temp_file(file_data, kFileStart, &file));
  const int file_fd = fileno(file);

  LayerLog framing, upper;
  w_.on_accept = [&](int fd) {
    add_stack(fd, &framing, &upper);
    void* buffer = malloc(moved.size());
    memcpy(buffer, moved.data(), moved.size());
    // Both belong to the library from here: ASan reports a leak or a double free.
    EXPECT_EQ(sock_write2(.fd = fd, .buffer = buffer, .length = moved.size(), .move = 1), 0);
    EXPECT_EQ(sock_write2(.fd = fd, .buffer = file, .file = 1), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  const std::string wire = read_to_eof(client);

  std::vector<std::string> frames;
  ASSERT_TRUE(deframe(wire, &frames));
  expect_bytes(xored_records(frames, frames.size()), moved + file_data.substr(kFileStart));
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
  // The FILE* was fclose'd once sent: its descriptor is gone.
  errno = 0;
  EXPECT_EQ(fcntl(file_fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
  close(client);
}

// A stateful layer (TLS: sequence numbers, cipher state) must wrap records in the order the
// peer receives them, even when file chunks are read as the socket drains and urgent writes
// jump the queue: records are wrapped just before they are first sent.
std::string decode_sequenced(const std::vector<std::string>& frames) {
  std::string payload;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    for (const char c : frames[i]) payload += static_cast<char>(c ^ static_cast<char>(i + 1));
  }
  return payload;
}

TEST_F(TlcTest, StatefulLayerWrapsACopyQueuedAfterAFileInWireOrder) {
  const std::string file_data = testing_support::pattern(40000, 61);
  FILE* file = nullptr;
  ASSERT_NO_FATAL_FAILURE(temp_file(file_data, 0, &file));
  const std::string head(100, 'A'), tail(50, 'B');
  LayerLog framing, sequenced;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &sequenced, Kind::kSequenced));
    EXPECT_EQ(sock_write(fd, head.data(), head.size()), 0);
    EXPECT_EQ(sock_write2(.fd = fd, .buffer = file, .file = 1), 0);
    EXPECT_EQ(sock_write(fd, tail.data(), tail.size()), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  std::vector<std::string> frames;
  ASSERT_TRUE(deframe(read_to_eof(client), &frames));
  EXPECT_TRUE(decode_sequenced(frames) == head + file_data + tail);
  close(client);
}

TEST_F(TlcTest, StatefulLayerWrapsAnUrgentWriteInWireOrder) {
  const std::string data = testing_support::pattern(100 * 1024, 62);
  const std::string urgent(10, 'U');
  LayerLog framing, sequenced;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &sequenced, Kind::kSequenced));
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    // Nothing was sent yet: the urgent write goes out first.
    EXPECT_EQ(sock_write2(.fd = fd, .buffer = urgent.data(), .length = urgent.size(), .urgent = 1),
              0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  std::vector<std::string> frames;
  ASSERT_TRUE(deframe(read_to_eof(client), &frames));
  EXPECT_TRUE(decode_sequenced(frames) == urgent + data);
  close(client);
}

// --- Held records, layer records in wire order, a stream a layer ends ----------------------

TEST_F(TlcTest, HeldRecordsWaitUntilTheLayerAsksForAFlush) {
  const std::string data = "held until the handshake is done";
  LayerLog framing, holding;
  sockTLC* holder = nullptr;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &holding, Kind::kHolding, &holder));
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_held(holding, holder, client));
  EXPECT_EQ(sock_pending(server), static_cast<ssize_t>(data.size()));

  // Nothing else will wake the fd (it is writable, no EPOLLOUT edge comes): the layer's call
  // alone flushes it, and wrap runs again for the held record.
  release(server, holder);
  std::string wire;
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, encode(data)));
  EXPECT_EQ(sock_pending(server), 0);
  EXPECT_TRUE(closed_.empty());
  close_and_wait(client);
}

TEST_F(TlcTest, HeldRecordsKeepTheirOrderBehindLayerRecords) {
  // One whole record, so that the second write starts a record of its own.
  const std::string first = testing_support::pattern(BUFFER_FILE_READ_SIZE, 81);
  const std::string second = "and the second write";
  LayerLog framing, holding;
  sockTLC* holder = nullptr;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &holding, Kind::kHolding, &holder));
    EXPECT_EQ(sock_write(fd, first.data(), first.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_held(holding, holder, client));

  // The layer's records go out at once, ahead of the records it holds (framed only: it wraps
  // none of its own), and a write made meanwhile waits behind those.
  std::string wire;
  ASSERT_EQ(sock_tlc_write(server, holder, "HS1", 3), 0);
  ASSERT_TRUE(read_at_least(client, &wire, framed("HS1").size()));
  EXPECT_EQ(sock_write(server, second.data(), second.size()), 0);
  ASSERT_EQ(sock_tlc_write(server, holder, "HS2", 3), 0);
  const std::string handshake = framed("HS1") + framed("HS2");
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, handshake));
  EXPECT_EQ(sock_pending(server), static_cast<ssize_t>(first.size() + second.size()));

  release(server, holder);
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, handshake + encode(first) + encode(second)));
  close_and_wait(client);
}

TEST_F(TlcTest, HoldingLayerBelowAnotherIsNotWrappedTwiceByTheOneAbove) {
  const std::string data = "framed once, then held";
  LayerLog holding, framing;
  sockTLC* holder = nullptr;
  sockTLC* upper = nullptr;
  w_.on_accept = [&](int fd) {
    holder = make_layer(Kind::kHolding, &holding);
    ASSERT_EQ(sock_tlc_add(fd, holder), 0);
    upper = make_layer(Kind::kFraming, &framing);
    ASSERT_EQ(sock_tlc_add(fd, upper), 0);
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_held(holding, holder, client));
  // Framed already (and the holder's retries do not frame it again).
  EXPECT_EQ(sock_pending(server), static_cast<ssize_t>(framed(data).size()));

  // The holder's own record goes before the record it holds; the framing layer's record goes
  // after it (the framing layer wrapped that one first), so it waits for the holder too.
  std::string wire;
  ASSERT_EQ(sock_tlc_write(server, holder, "HS", 2), 0);
  ASSERT_TRUE(read_at_least(client, &wire, 2));
  ASSERT_EQ(sock_tlc_write(server, upper, "UP", 2), 0);
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, "HS"));

  release(server, holder);
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, "HS" + xored(framed(data)) + xored("UP")));
  close_and_wait(client);
}

TEST_F(TlcTest, SockCloseWaitsForHeldRecords) {
  const std::string data = testing_support::pattern(BUFFER_FILE_READ_SIZE + 1000, 82);
  LayerLog framing, holding;
  sockTLC* holder = nullptr;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &holding, Kind::kHoldingSayingBye, &holder));
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_held(holding, holder, client));
  EXPECT_TRUE(closed_.empty());
  EXPECT_EQ(holding.before_close, 0);  // the queue has not drained

  // Released: the records, then the layer's final record (before_close), then the close.
  release(server, holder);
  const std::string expected = encode(data.substr(0, BUFFER_FILE_READ_SIZE)) +
                               encode(data.substr(BUFFER_FILE_READ_SIZE)) + framed("BYE");
  expect_bytes(read_to_eof(client), expected);
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(holding.before_close, 1);
  EXPECT_EQ(holding.on_clear, 1);
  close(client);
}

TEST_F(TlcTest, LayerHoldingFromItsFirstWrapSendsItsHelloThenTheDataOnceTheReplyCame) {
  const std::string data = "application data after the handshake";
  LayerLog framing, handshake;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &handshake, Kind::kHandshake));
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  // HELLO, queued from inside the wrap that held the data, goes out on its own.
  std::string wire;
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, framed(kHello)));
  EXPECT_GT(handshake.holds, 0);

  // The reply is unwrapped; the layer asks for a flush from inside unwrap.
  testing_support::write_all(client, framed(kWelcome));
  ASSERT_NO_FATAL_FAILURE(expect_wire(client, &wire, framed(kHello) + encode(data)));
  EXPECT_EQ(w_.conns[server].in, "");  // the handshake is the layer's, not the application's
  EXPECT_TRUE(w_.conns[server].reads.empty());
  close_and_wait(client);
}

// The records gathered for one sendmsg are wrapped one by one: HELLO is queued while the
// first is wrapped (nothing gathered yet), PING while the third is (two gathered before it).
TEST_F(TlcTest, LayerRecordQueuedFromInsideWrapGoesBeforeTheRecordBeingWrapped) {
  constexpr std::size_t kRecord = BUFFER_FILE_READ_SIZE;
  const std::string data = testing_support::pattern(2 * kRecord + 10, 85);
  LayerLog framing, announcing;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &announcing, Kind::kAnnouncing));
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  const std::string expected = framed(kHello) + framed(sequenced(1, data.substr(0, kRecord))) +
                               framed(sequenced(2, data.substr(kRecord, kRecord))) +
                               framed(kPing) + framed(sequenced(3, data.substr(2 * kRecord)));
  expect_bytes(read_to_eof(client), expected);
  close(client);
}

TEST_F(TlcTest, LayerRecordGoesAfterWhatTheLayerWrappedAndBeforeWritesItHasNotWrapped) {
  // Far more than one flush step gathers: the socket blocks with records wrapped but not yet
  // sent, and more not wrapped at all.
  constexpr std::size_t kBytes = 2 * 1024 * 1024;
  constexpr std::size_t kRecords = kBytes / BUFFER_FILE_READ_SIZE;
  const std::string data = testing_support::pattern(kBytes, 83);
  LayerLog framing, sequenced_log;
  sockTLC* layer = nullptr;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &sequenced_log, Kind::kSequenced, &layer));
    testing_support::set_sndbuf(fd, 4096);
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server, 4096);
  ASSERT_NE(layer, nullptr);
  const unsigned& wrapped = static_cast<Layer*>(layer->udata)->records;
  ASSERT_TRUE(run_until(&r_, [&] { return wrapped > 0; }));
  settle();  // the client reads nothing: the flush stays blocked
  const unsigned wrapped_before = wrapped;
  ASSERT_LT(wrapped_before, kRecords);
  ASSERT_EQ(sock_tlc_write(server, layer, "REC", 3), 0);
  sock_close(&r_, server);

  std::vector<std::string> frames;
  ASSERT_TRUE(deframe(read_to_eof(client), &frames));
  ASSERT_EQ(frames.size(), kRecords + 1);
  // Exactly after the records the layer had wrapped, framed only; the layer's sequence runs
  // on through the rest as if it were not there.
  const auto at = std::find(frames.begin(), frames.end(), "REC");
  ASSERT_NE(at, frames.end());
  EXPECT_EQ(static_cast<std::size_t>(at - frames.begin()), wrapped_before);
  frames.erase(at);
  EXPECT_TRUE(decode_sequenced(frames) == data);
  close(client);
}

TEST_F(TlcTest, UrgentWriteNeverGoesBeforeALayerRecord) {
  const std::string data = "queued first";
  const std::string urgent = "URGENT";
  LayerLog framing, sequenced_log;
  w_.on_accept = [&](int fd) {
    sockTLC* layer = nullptr;
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &sequenced_log, Kind::kSequenced, &layer));
    // Nothing is wrapped yet: the layer's record goes before the write, and the urgent write
    // may pass the write but not the record.
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    EXPECT_EQ(sock_tlc_write(fd, layer, "HS", 2), 0);
    EXPECT_EQ(sock_write2(.fd = fd, .buffer = urgent.data(), .length = urgent.size(), .urgent = 1),
              0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  EXPECT_EQ(read_to_eof(client),
            framed("HS") + framed(sequenced(1, urgent)) + framed(sequenced(2, data)));
  close(client);
}

TEST_F(TlcTest, UrgentWriteNeverGoesBeforeARecordTheLayersAboveTheHolderWrapped) {
  const std::string data = "wrapped by the sequenced layer, then held";
  const std::string urgent = "URGENT";
  LayerLog framing, holding, sequenced_log;
  sockTLC* holder = nullptr;
  w_.on_accept = [&](int fd) {
    ASSERT_NO_FATAL_FAILURE(add_stack(fd, &framing, &holding, Kind::kHolding, &holder));
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kSequenced, &sequenced_log)), 0);
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_held(holding, holder, client));
  // The held record is the sequenced layer's record 1: the urgent write is its record 2 and
  // must follow it.
  ASSERT_EQ(sock_write2(.fd = server, .buffer = urgent.data(), .length = urgent.size(),
                        .urgent = 1),
            0);
  release(server, holder);
  std::string wire;
  ASSERT_NO_FATAL_FAILURE(expect_wire(
      client, &wire, framed(xored(sequenced(1, data))) + framed(xored(sequenced(2, urgent)))));
  close_and_wait(client);
}

// The end marker comes in the same read as the layer's last output: EOF comes after it, and
// the reactor closes as for a peer's FIN (before_close queues the layer's reply), although
// the peer keeps its side open.
TEST_F(TlcTest, UnwrapEndingTheStreamReadsAsEofAfterItsOutput) {
  LayerLog ending;
  w_.on_accept = push_layer(Kind::kEnding, &ending);
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, std::string("last words") + kEnd + "ignored");
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }, std::chrono::seconds(5)));
  EXPECT_EQ(w_.conns[server].in, "last words");
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  EXPECT_EQ(ending.before_close, 1);
  EXPECT_EQ(ending.on_clear, 1);
  EXPECT_EQ(read_to_eof(client), "BYE");
  close(client);
}

// The same with a reader that takes the output 4 bytes at a time: the rest waits as leftover
// plaintext, and EOF still comes after the last of it.
TEST_F(TlcTest, UnwrapEndingTheStreamReadsAsEofAfterOutputReadInPieces) {
  LayerLog ending;
  w_.on_accept = push_layer(Kind::kEnding, &ending);
  w_.on_conn_data = [&](int fd) {
    char buf[4];
    errno = 0;
    const ssize_t n = sock_read(fd, buf, sizeof buf);
    if (n > 0) w_.conns[fd].in.append(buf, static_cast<std::size_t>(n));
    if (n < 0) w_.conns[fd].reads.push_back({n, errno});
  };
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, std::string("last words") + kEnd);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }, std::chrono::seconds(5)));
  EXPECT_EQ(w_.conns[server].in, "last words");
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  EXPECT_EQ(read_to_eof(client), "BYE");
  close(client);
}

// The end marker alone, after output that was read earlier: EOF at once.
TEST_F(TlcTest, UnwrapEndingTheStreamWithNoOutputReadsAsEof) {
  LayerLog ending;
  w_.on_accept = push_layer(Kind::kEnding, &ending);
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, "data");
  ASSERT_TRUE(run_until(&r_, [&] { return w_.conns[server].in.size() >= 4; }));
  testing_support::write_all(client, kEnd);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }, std::chrono::seconds(5)));
  EXPECT_EQ(w_.conns[server].in, "data");
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  EXPECT_EQ(read_to_eof(client), "BYE");
  close(client);
}

// A layer above the ending one holds more output than one call may give: all of it comes
// before the EOF, although the socket is not read again.
TEST_F(TlcTest, UnwrapEndingTheStreamLetsTheLayersAboveHandOutAllTheirOutputFirst) {
  LayerLog ending, expand;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kEnding, &ending)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kExpand, &expand)), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  const std::string sent = testing_support::pattern(2000, 84);
  testing_support::write_all(client, sent + kEnd);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }, std::chrono::seconds(5)));
  EXPECT_TRUE(expand.held_partial);
  expect_bytes(w_.conns[server].in, expanded(sent));
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  EXPECT_EQ(read_to_eof(client), "BYE");
  close(client);
}

// Both layers end with a final record (TLS over TLS: each sends close_notify). The lower one
// wraps the upper one's, so its own must follow it: each layer's before_close runs when the
// queue is empty, head first.
TEST_F(TlcTest, FinalRecordsOfStackedLayersGoOutTopLayerFirst) {
  const std::string data = "the last data";
  LayerLog framing, upper;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFramingSayingBye, &framing)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kXorSayingBye, &upper)), 0);
    EXPECT_EQ(sock_write(fd, data.data(), data.size()), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  EXPECT_EQ(read_to_eof(client), encode(data) + framed("BYE") + "BYE");
  ASSERT_TRUE(run_until(&r_, [&] { return closed_.size() == 1; }));
  EXPECT_EQ(framing.before_close, 1);
  EXPECT_EQ(upper.before_close, 1);
  close(client);
}

// --- Output held by a layer while the peer sends nothing more --------------------------------

// Sends what the non-blocking client's socket takes of data from *sent on, for run_until
// predicates: the reactor reads between calls, so no amount fills the socket buffers for good.
void send_some(int fd, const std::string& data, std::size_t* sent) {
  while (*sent < data.size()) {
    const ssize_t n = send(fd, data.data() + *sent, data.size() - *sent, MSG_NOSIGNAL);
    if (n <= 0) return;  // full for now (EAGAIN)
    *sent += static_cast<std::size_t>(n);
  }
}

// A reader whose buffer takes a whole unwrap's output (so no plaintext is left over to keep
// it called), reading until sock_read says 0.
constexpr std::size_t kLargeRead = 128 * 1024;

// The layer returns a full buffer after the socket said EAGAIN: it holds more, and the read
// must not count the socket's emptiness as the end of the input. Before the fix the reader got
// 139,264 of 200,000 bytes and the rest waited for the peer to send again.
TEST_F(TlcTest, OutputALayerHoldsIsReadInFullWhileThePeerKeepsItsSideOpen) {
  LayerLog expand;
  w_.on_accept = push_layer(Kind::kExpand, &expand);
  w_.on_conn_data = [&](int fd) { read_everything(fd, kLargeRead); };
  int server;
  const int client = connect_and_accept(&server);
  const std::string sent = testing_support::pattern(2000, 86);
  testing_support::write_all(client, sent);
  const std::string expected = expanded(sent);
  EXPECT_TRUE(run_until(&r_, [&] {
    return w_.conns[server].in.size() >= expected.size() || w_.conns[server].eof;
  }, std::chrono::seconds(5)));
  EXPECT_TRUE(expand.held_partial);
  expect_bytes(w_.conns[server].in, expected);
  EXPECT_FALSE(w_.conns[server].eof);
  w_.on_conn_data = nullptr;  // read the EOF so the connection closes
  close_and_wait(client);
}

// The same one layer up: a frame carrying a frame bigger than two unwrap buffers. The lower
// framing layer fills the buffer, the upper one takes all of it and yields nothing yet: the
// read must call them again although the socket said EAGAIN and nothing was output.
TEST_F(TlcTest, OutputALowerLayerHoldsReachesTheLayerAboveWithoutMoreInput) {
  LayerLog outer, inner;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, &outer)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, &inner)), 0);
  };
  w_.on_conn_data = [&](int fd) { read_everything(fd, kLargeRead); };
  int server;
  const int client = connect_and_accept(&server);
  const std::string payload = testing_support::pattern(150000, 87);
  const std::string wire = framed(framed(payload));
  std::size_t sent = 0;
  EXPECT_TRUE(run_until(&r_, [&] {
    send_some(client, wire, &sent);
    return w_.conns[server].in.size() >= payload.size() || w_.conns[server].eof;
  }, std::chrono::seconds(5)));
  EXPECT_TRUE(outer.held_partial);
  expect_bytes(w_.conns[server].in, payload);
  EXPECT_FALSE(w_.conns[server].eof);
  w_.on_conn_data = nullptr;
  close_and_wait(client);
}

// And before the peer's EOF: the lower layer is called again at EOF until it holds nothing,
// although the upper one yields nothing from its first buffers.
TEST_F(TlcTest, OutputALowerLayerHoldsReachesTheLayerAboveBeforeEof) {
  LayerLog outer, inner;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, &outer)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, &inner)), 0);
  };
  w_.on_conn_data = [&](int fd) { read_everything(fd, kLargeRead); };
  int server;
  const int client = connect_and_accept(&server);
  const std::string payload = testing_support::pattern(150000, 89);
  const std::string wire = framed(framed(payload));
  std::size_t sent = 0;
  bool shut = false;
  ASSERT_TRUE(run_until(&r_, [&] {
    send_some(client, wire, &sent);
    if (sent == wire.size() && !shut) shut = shutdown(client, SHUT_WR) == 0;
    return closed_.size() == 1;
  }, std::chrono::seconds(5)));
  expect_bytes(w_.conns[server].in, payload);
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  close(client);
}

// The end marker comes out of a lower layer's held output, in a call after the socket said
// EAGAIN: EOF follows the last output although the peer keeps its side open.
TEST_F(TlcTest, UnwrapEndingTheStreamAfterTheSocketWasEmptiedReadsAsEof) {
  LayerLog framing, ending;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFraming, &framing)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kEnding, &ending)), 0);
  };
  w_.on_conn_data = [&](int fd) { read_everything(fd, kLargeRead); };
  int server;
  const int client = connect_and_accept(&server);
  // The marker lies past the first unwrap buffer's worth of the frame's payload.
  const std::string data = testing_support::pattern(80000, 88);
  const std::string wire = framed(data + kEnd + "ignored");
  std::size_t sent = 0;
  ASSERT_TRUE(run_until(&r_, [&] {
    send_some(client, wire, &sent);
    return closed_.size() == 1;
  }, std::chrono::seconds(5)));
  expect_bytes(w_.conns[server].in, data);
  ASSERT_NO_FATAL_FAILURE(expect_one_eof(server));
  EXPECT_EQ(read_to_eof(client), framed("BYE"));
  close(client);
}

// --- Layers that change the chain from inside unwrap ----------------------------------------

// The header comes alone: the layer removes itself and outputs nothing, and the read must not
// call it again (it is freed) but read on without layers.
TEST_F(TlcTest, UnwrapThatRemovesTheLayersIsNotCalledAgainAndTheRestIsPlain) {
  LayerLog stripping;
  w_.on_accept = push_layer(Kind::kStripping, &stripping);
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, "PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n");
  ASSERT_TRUE(run_until(&r_, [&] { return stripping.on_clear == 1; }));
  settle();
  EXPECT_EQ(sock_tlc_get(server), nullptr);
  testing_support::write_all(client, "plain");
  ASSERT_TRUE(run_until_received(server, 5));
  EXPECT_EQ(w_.conns[server].in, "plain");
  EXPECT_EQ(stripping.unwrap_calls, 1);
  EXPECT_EQ(stripping.on_clear, 1);
  close_and_wait(client);
}

// The header and what follows it in one read: the layer's output (all after the header) is
// the new chain's input.
TEST_F(TlcTest, UnwrapThatReplacesTheChainHandsWhatFollowedTheHeaderToTheNewChain) {
  LayerLog switching, successor;
  w_.on_accept = [&](int fd) {
    sockTLC* layer = make_layer(Kind::kSwitching, &switching);
    static_cast<Layer*>(layer->udata)->installs = &successor;
    ASSERT_EQ(sock_tlc_add(fd, layer), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, "SWITCH\n" + xored("first"));
  ASSERT_TRUE(run_until_received(server, 5));
  testing_support::write_all(client, xored(" second"));
  ASSERT_TRUE(run_until_received(server, 12));
  EXPECT_EQ(w_.conns[server].in, "first second");
  EXPECT_EQ(switching.unwrap_calls, 1);
  EXPECT_EQ(switching.on_clear, 1);
  EXPECT_GE(successor.unwrap_calls, 2);
  close_and_wait(client);
  EXPECT_EQ(successor.on_clear, 1);
}

// A layer pushed on top from inside unwrap unwraps that call's output already, and the layer
// that pushed it stays below it.
TEST_F(TlcTest, LayerPushedFromInsideUnwrapUnwrapsTheOutputOfThatCall) {
  LayerLog pushing, pushed;
  w_.on_accept = [&](int fd) {
    sockTLC* layer = make_layer(Kind::kPushing, &pushing);
    static_cast<Layer*>(layer->udata)->installs = &pushed;
    ASSERT_EQ(sock_tlc_add(fd, layer), 0);
  };
  int server;
  const int client = connect_and_accept(&server);
  testing_support::write_all(client, "PUSH\n" + xored("first"));
  ASSERT_TRUE(run_until_received(server, 5));
  testing_support::write_all(client, xored(" second"));
  ASSERT_TRUE(run_until_received(server, 12));
  EXPECT_EQ(w_.conns[server].in, "first second");
  EXPECT_GE(pushing.unwrap_calls, 2);
  EXPECT_GE(pushed.unwrap_calls, 2);
  EXPECT_EQ(pushing.on_clear, 0);
  close_and_wait(client);
  EXPECT_EQ(pushing.on_clear, 1);
  EXPECT_EQ(pushed.on_clear, 1);
}

// --- A close from inside the graceful close ------------------------------------------------

// before_close force-closes the fd: on_clear frees the layer there, and the graceful close must
// neither read it again nor close the fd (a number another connection may hold by then) and
// report on_close a second time.
TEST_F(TlcTest, BeforeCloseThatForceClosesTheFdClosesItOnce) {
  LayerLog closing;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kForceClosingOnClose, &closing)), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(closing.before_close, 1);
  EXPECT_EQ(closing.on_clear, 1);
  EXPECT_EQ(read_to_eof(client), "");
  close(client);
}

// before_close removes the layers: the layer below the freed one is found from the chain as it
// is now (none), and the close goes on, once.
TEST_F(TlcTest, BeforeCloseThatRemovesTheLayersLetsTheCloseGoOn) {
  LayerLog removing, below;
  w_.on_accept = [&](int fd) {
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kFramingSayingBye, &below)), 0);
    ASSERT_EQ(sock_tlc_add(fd, make_layer(Kind::kRemovingOnClose, &removing)), 0);
    sock_close(&r_, fd);
  };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_NO_FATAL_FAILURE(expect_closed_once(server));
  EXPECT_EQ(removing.before_close, 1);
  EXPECT_EQ(below.before_close, 0);  // removed before its turn
  EXPECT_EQ(removing.on_clear, 1);
  EXPECT_EQ(below.on_clear, 1);
  EXPECT_EQ(read_to_eof(client), "");
  close(client);
}

// A layer added while a packet is half sent (libsock.h: a write made before the layers may
// already be on the wire): the rest of that packet goes raw too, and the layer begins with the
// next packet. Wrapped whole, the packet's record went out from the raw offset: the layer's
// bytes began inside a packet (with a framing layer, inside a frame).
TEST_F(TlcTest, ALayerAddedWhileAPacketIsHalfSentBeginsWithTheNextPacket) {
  const std::string data = testing_support::pattern(256 * 1024, 31);
  int server;
  const int client = connect_and_accept(&server, 4096);
  ASSERT_GE(server, 0);
  testing_support::set_sndbuf(server, 4096);
  ASSERT_EQ(sock_write(server, data.data(), data.size()), 0);
  // What the socket took at once; the rest is queued in packets of BUFFER_PACKET_SIZE bytes.
  const auto queued = static_cast<std::size_t>(sock_pending(server));
  const std::size_t direct = data.size() - queued;
  std::string wire;
  ASSERT_TRUE(read_at_least(client, &wire, 64 * 1024 + 1));
  const auto left = static_cast<std::size_t>(sock_pending(server));
  ASSERT_GT(left, 0u) << "precondition: the queue is partly sent";
  ASSERT_NE((queued - left) % BUFFER_PACKET_SIZE, 0u) << "precondition: a packet is half sent";
  LayerLog upper;
  ASSERT_EQ(sock_tlc_add(server, make_layer(Kind::kXor, &upper)), 0);
  ASSERT_TRUE(read_at_least(client, &wire, data.size()));
  ASSERT_EQ(wire.size(), data.size());
  std::size_t raw = 0;
  while (raw < data.size() && wire[raw] == data[raw]) ++raw;
  EXPECT_EQ((raw - direct) % BUFFER_PACKET_SIZE, 0u)
      << "the layer began " << (raw - direct) % BUFFER_PACKET_SIZE << " bytes into a packet";
  EXPECT_TRUE(wire.substr(raw) == xored(data.substr(raw)));
  close(client);
}

#if !defined(NDEBUG)
// A wrap runs amid the queue being sent: closing the fd from there (or changing the layers)
// would free the packets send_queue is gathering. libsock.h forbids it, and debug builds stop
// at it rather than send freed memory.
TEST_F(TlcTest, AWrapThatClosesItsFdAbortsInDebugBuilds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  static sockTLC closer{};
  closer.wrap = [](int fd, Packet*, void*) {
    sock_force_close(nullptr, fd);
    return 0;
  };
  w_.on_accept = [](int fd) { ASSERT_EQ(sock_tlc_add(fd, &closer), 0); };
  int server;
  const int client = connect_and_accept(&server);
  ASSERT_GE(server, 0);
  EXPECT_DEATH(
      {
        sock_write(server, "x", 1);
        sock_flush(server);
      },
      "wrap closed its fd or changed its layers");
  EXPECT_EQ(sock_tlc_set(server, nullptr), 0);  // no on_clear: the layer is static
  close(client);
}
#endif

// --- A blocking socket ----------------------------------------------------------------------

// sock_open makes an fd non-blocking, but another holder of the file may set it back: the
// layers' recv, like a plain read's, must say 0 when nothing waits instead of blocking
// (sock_read_test has the plain one).
TEST(TlcWithoutReactorTest, LayersOnABlockingSocketReadZeroWhenNothingWaits) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);  // both blocking
  ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
  ASSERT_EQ(testing_support::set_blocking(pair[0]), 0);
  LayerLog xor_log;
  ASSERT_EQ(sock_tlc_add(pair[0], make_layer(Kind::kXor, &xor_log)), 0);
  char buf[16];
  {
    const BlockWatchdog watchdog(pair[1], BlockWatchdog::Unblock::kEndPeerOutput);
    ASSERT_EQ(sock_read(pair[0], buf, sizeof buf), 0);
    const std::string wire = xored("abc");
    ASSERT_EQ(send(pair[1], wire.data(), wire.size(), MSG_NOSIGNAL), 3);
    ASSERT_EQ(sock_read(pair[0], buf, sizeof buf), 3);
    ASSERT_EQ(sock_read(pair[0], buf, sizeof buf), 0);
    EXPECT_FALSE(watchdog.fired());
  }
  EXPECT_EQ(std::string(buf, 3), "abc");
  sock_close(nullptr, pair[0]);
  EXPECT_TRUE(sock_is_closed(pair[0]));
  EXPECT_EQ(xor_log.on_clear, 1);
  close(pair[1]);
}

}  // namespace
