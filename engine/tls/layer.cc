// The TLS transport layer of one connection (sock_tls_accept / sock_tls_connect).
// During the handshake, OpenSSL reads and writes through a BIO over the layer's buffers of the
// moment (never the socket):
// - unwrap: the received ciphertext is the BIO's input; plaintext is written over it.
// - wrap: the record's ciphertext goes straight into the packet (its headroom takes the
//   overhead); plaintext waits, held, until the handshake is done.
// - anything else OpenSSL writes (handshake flights, tickets, alerts, close_notify) is staged
//   per thread and queued with sock_tlc_write() after the call that produced it.
// Once a TLS 1.3 handshake completes, the connection keeps only its traffic keys (record.h):
// the SSL object is freed, and records are sealed and opened here. OpenSSL gives the
// application traffic secrets through its keylog callback; the sequence numbers at that
// moment are known (see hand_over()). TLS 1.2 connections keep OpenSSL to the end, and so do
// TLS 1.3 ones whose client asked for a max fragment length (RFC 6066 4; OpenSSL grants it
// under 1.3 too): OpenSSL splits each packet into records of that length, which the layer's
// own sealing (one record per packet) would not.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "engine/connection.h"
#include "engine/libsock.h"
#include "engine/tls/config.h"
#include "engine/tls/layer.h"
#include "engine/tls/record.h"
#include "engine/tls/sock_tls.h"
#include "engine/tls/stats.h"
#include "engine/tls/testing_hooks.h"

namespace tls {
namespace {

// A TLS record carries at most 16 KB of plaintext, which is the engine's record size; its
// overhead (TLS 1.3: 22 bytes, TLS 1.2 AEAD suites: 29) fits the packet's headroom.
static_assert(BUFFER_FILE_READ_SIZE <= 16384, "a record's plaintext must fit one TLS record");
static_assert(BUFFER_PACKET_SIZE - BUFFER_FILE_READ_SIZE >= 256,
              "the packet's headroom must take a TLS record's overhead");
static_assert(BUFFER_FILE_READ_SIZE + kSealOverhead <= BUFFER_PACKET_SIZE);
// A post-handshake message longer than this is refused (a KeyUpdate is 5 bytes; a client's
// NewSessionTicket is a few hundred).
constexpr std::size_t kMaxPostHandshakeMessage = kMaxPlaintext;
// TLS 1.3 records (opened by the layer itself, after hand_over) a peer may send in a row that
// carry no application data: empty ones, post-handshake messages (KeyUpdates, tickets),
// user_canceled alerts. Past this the connection fails. Such a record gives sock_read nothing
// to return, so without a limit a peer streaming them (an empty one is 22 bytes) keeps one
// sock_read reading, and each KeyUpdate costs a key derivation. OpenSSL allows 32 empty
// records in a row (MAX_EMPTY_RECORDS, also for TLS 1.2, whose records it opens) and 5
// warning alerts (user_canceled among them); BoringSSL 32 KeyUpdates.
constexpr unsigned kMaxRecordsWithoutData = 32;
// Records OpenSSL may write on its own while reading a TLS 1.2 connection (no_renegotiation
// alerts: one per renegotiation ClientHello, or HelloRequest to a client, and one record may
// hold thousands) since this connection's queue was last empty: past this the connection
// fails. They are queued with sock_tlc_write, which no watermark checks, so a peer that
// reads none could otherwise grow the queue without bound (each 16 KB record of 4-byte
// ClientHellos queues 124 KB of alerts); and data between them proves nothing of its reading.
// A peer that takes what is sent empties the queue, and its answers count afresh.
constexpr unsigned kMaxUnreadAnswers = 32;
// A KeyUpdate sealed in front of a record in its packet: header, message, type, tag.
constexpr std::size_t kKeyUpdateRecord = kSealOverhead + 5;
static_assert(BUFFER_FILE_READ_SIZE + kSealOverhead + kKeyUpdateRecord <= BUFFER_PACKET_SIZE,
              "an owed KeyUpdate must fit in front of a full record");
// A connection with a max fragment length keeps OpenSSL, which seals a packet as records of
// at most that length (512 bytes at the least): each adds its overhead (29 bytes at most, a
// TLS 1.2 AEAD suite's), and a KeyUpdate OpenSSL owes may go in front.
constexpr std::size_t kSmallestMaxFragment = 512;
constexpr std::size_t kMaxRecordOverhead = 29;
constexpr std::size_t kMostRecordsPerPacket =
    (BUFFER_FILE_READ_SIZE + kSmallestMaxFragment - 1) / kSmallestMaxFragment;
static_assert(BUFFER_FILE_READ_SIZE + kMostRecordsPerPacket * kMaxRecordOverhead +
                      kKeyUpdateRecord <= BUFFER_PACKET_SIZE,
              "a packet's records at the smallest max fragment length must fit the packet");

enum class Phase : unsigned char { kHandshake, kOpen, kEnded, kFailed };

// The keylog callback's secrets (bits of Connection::secrets).
constexpr unsigned kReadSecret = 1, kWriteSecret = 2;

struct Connection {
  sockTLC layer;  // layer.udata == this
  SSL* ssl;       // nullptr once a TLS 1.3 connection runs on `keys`
  SockTLS* config;
  int fd;
  Phase phase = Phase::kHandshake;
  bool server;
  bool shut = false;     // close_notify queued
  bool left = false;     // the peer's close_notify came during the handshake: input ended
  bool resumed = false;  // from a ticket
  // The layer set the fd's deadline at the start (the configuration's timeout then), so
  // establish() clears it. Not the timeout read again: it may have changed since, and a
  // deadline the application set on a connection started without one is the application's.
  bool armed_deadline = false;
  bool key_update_owed = false;  // the peer asked for one: sent before the next record
  unsigned records_without_data = 0;  // TLS 1.3, in a row (kMaxRecordsWithoutData)
  // With OpenSSL kept (TLS 1.2, a max fragment length), since the queue was last empty
  // (kMaxUnreadAnswers).
  unsigned unread_answers = 0;
  unsigned secrets = 0;  // kReadSecret | kWriteSecret, as the keylog callback gave them
  const std::string* alpn = nullptr;  // the configuration's name ALPN chose
  int64_t started_us;
  RecordKeys keys;  // TLS 1.3: the application traffic keys
  // Bytes of a record not yet whole, in partial_cap bytes malloc'd while one is pending
  // (keep_partial). Of a handshake message (post_handshake): malloc'd.
  uint8_t* partial = nullptr;
  std::size_t partial_len = 0;
  std::size_t partial_cap = 0;
  uint8_t* message = nullptr;
  std::size_t message_len = 0;
  // The BIO's input during unwrap: bytes not consumed yet.
  const char* in = nullptr;
  std::size_t in_len = 0;
  // The BIO's output during wrap: the packet's memory; nullptr: the thread's staging.
  char* sink = nullptr;
  std::size_t sink_len = 0;
  // Ciphertext received but not yet read by OpenSSL when an unwrap's output filled its
  // buffer (malloc'd; rare).
  char* backlog = nullptr;
  std::size_t backlog_len = 0;
};


// partial_record_bytes_copied()'s count: thread_local, so a plain add on the path that keeps
// a partial record (never on one that opens whole records in place).
thread_local uint64_t t_partial_bytes = 0;

int64_t monotonic_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// Per thread: what OpenSSL wrote outside a wrap, and copies of unwrap input and wrap
// plaintext (OpenSSL must not read a buffer it is writing into).
std::vector<char>& staging() {
  thread_local std::vector<char> bytes;
  return bytes;
}
std::vector<char>& scratch() {
  thread_local std::vector<char> bytes;
  return bytes;
}

// SSL_get_error() reads the thread's error queue, which must be empty before each call.
// OpenSSL 3.0's ERR_clear_error() costs hundreds of instructions even on an empty queue; a
// look first costs a few dozen.
void clear_errors() {
  if (ERR_peek_error()) ERR_clear_error();
}

// ---- The BIO over the layer's buffers ----

int bio_write(BIO* bio, const char* data, int len) {
  auto* c = static_cast<Connection*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  const auto n = static_cast<std::size_t>(len);
  if (c->sink) {
    // Cannot happen: one packet's records fit (see kSmallestMaxFragment).
    if (c->sink_len + n > BUFFER_PACKET_SIZE) return -1;
    std::memcpy(c->sink + c->sink_len, data, n);
    c->sink_len += n;
  } else {
    staging().insert(staging().end(), data, data + n);
  }
  return len;
}

int bio_read(BIO* bio, char* out, int len) {
  auto* c = static_cast<Connection*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (!c->in_len) {
    BIO_set_retry_read(bio);
    return -1;
  }
  const std::size_t n = std::min(c->in_len, static_cast<std::size_t>(std::max(len, 0)));
  std::memcpy(out, c->in, n);
  c->in += n;
  c->in_len -= n;
  return static_cast<int>(n);
}

long bio_ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "libsock_tlc");
    if (m) {
      BIO_meth_set_write(m, bio_write);
      BIO_meth_set_read(m, bio_read);
      BIO_meth_set_ctrl(m, bio_ctrl);
      BIO_meth_set_create(m, bio_create);
    }
    return m;
  }();
  return method;
}

// ---- Connection state ----

int tls_wrap(int fd, Packet* packet, void* udata);

// fd's TLS layer (the lowest), or nullptr with errno: sock_tlc_get's (EBADF, or EPERM off the
// owner thread, which sock_tls.h promises), else EBADF for an fd without TLS.
Connection* of(int fd) {
  errno = 0;  // sock_tlc_get sets it only when it fails, not for an fd without layers
  sockTLC* layer = sock_tlc_get(fd);
  while (layer && layer->next) layer = layer->next;
  if (layer && layer->wrap == tls_wrap) return static_cast<Connection*>(layer->udata);
  if (layer || errno == 0) errno = EBADF;  // layers, but none is TLS; or none at all
  return nullptr;
}

// Queues what OpenSSL staged (handshake records, tickets, alerts). False: no memory.
bool send_staged(Connection* c) {
  std::vector<char>& bytes = staging();
  if (bytes.empty()) return true;
  const int r = sock_tlc_write(c->fd, &c->layer, bytes.data(), bytes.size());
  bytes.clear();
  return r == 0;
}

// Fails the connection (the engine closes it): the reason, its count and its log line.
// ssl_result: SSL_get_error's, or 0 when OpenSSL has no part in it. The log callback is the
// user's and runs last: one that closes the fd, against sock_tls.h's rule, frees c (on_clear)
// and, if its reference was the last, c->config; after it, nothing of either is touched here,
// and the callers return at once. That makes a close from inside unwrap harmless (tlc_read
// checks the fd's generation); inside wrap the engine's write queue still holds the packet
// being wrapped, which such a close frees: hence the rule.
int fail(Connection* c, const char* what, int ssl_result) {
  std::string reason = what;
  const bool verify_failed =
      c->ssl && c->phase == Phase::kHandshake && SSL_get_verify_result(c->ssl) != X509_V_OK;
  if (verify_failed) {
    reason += ": certificate verify failed: ";
    reason += X509_verify_cert_error_string(SSL_get_verify_result(c->ssl));
    clear_errors();
  } else if (ssl_result == SSL_ERROR_SYSCALL) {
    reason += ": the peer's bytes ended inside a record";
  }
  set_error(reason);
  if (c->phase == Phase::kHandshake) {
    count_failure(verify_failed ? SOCK_TLS_FAIL_CERTIFICATE : SOCK_TLS_FAIL_PROTOCOL);
  } else {
    count_record_failure();
  }
  staging().clear();  // an alert OpenSSL staged cannot go out: the fd closes at once
  c->phase = Phase::kFailed;  // also tells on_clear that the failure is counted
  log_failure(*c->config, c->fd);
  return -1;
}

// Queues one record of the connection's own (an alert, a KeyUpdate) sealed with its keys.
bool send_record(Connection* c, ContentType type, const uint8_t* data, std::size_t n) {
  uint8_t rec[kSealOverhead + 8];
  if (n > sizeof rec - kSealOverhead) return false;
  std::memcpy(rec + kHeaderBytes, data, n);
  const std::size_t len = seal(c->keys, type, rec, n);
  return len && sock_tlc_write(c->fd, &c->layer, rec, len) == 0;
}

// The keylog callback's line "LABEL <client random> <secret>", hex: the application traffic
// secrets, which the layer needs once it frees the SSL object.
void keep_secret(Connection* c, bool client_secret, const char* hex) {
  const std::size_t n = std::strlen(hex) / 2;
  if (n > kMaxSecret || std::strlen(hex) % 2) return;
  // The peer's secret protects what this side reads.
  const bool read = client_secret == c->server;
  TrafficKeys& dir = read ? c->keys.read : c->keys.write;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned hi = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[2 * i]));
    const unsigned lo = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[2 * i + 1]));
    dir.secret[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  c->keys.hash_len = static_cast<uint8_t>(n);
  c->secrets |= read ? kReadSecret : kWriteSecret;
}

// Number of whole records in bytes OpenSSL wrote.
uint64_t records_in(const std::vector<char>& bytes) {
  uint64_t count = 0;
  for (std::size_t at = 0; at + kHeaderBytes <= bytes.size(); ++count) {
    const auto* h = reinterpret_cast<const uint8_t*>(bytes.data() + at);
    at += kHeaderBytes + (static_cast<std::size_t>(h[3]) << 8 | h[4]);
  }
  return count;
}

// A completed TLS 1.3 handshake: from here on the connection runs on its traffic keys alone.
// The sequence numbers are known because OpenSSL, with read-ahead off, reads no record past
// the peer's Finished, so both read sequences are 0; a client has written nothing under its
// application key yet, and a server only what the completing SSL_do_handshake call wrote
// (its session tickets: the rest of its flight went out in an earlier call). written_now:
// that call's output, still staged.
bool hand_over(Connection* c, const std::vector<char>& written_now) {
  uint16_t suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(c->ssl));
  uint8_t hash_len = 0;
  if (c->secrets != (kReadSecret | kWriteSecret) ||
      !aead_of_suite(suite, &c->keys.aead, &hash_len) || hash_len != c->keys.hash_len ||
      !derive_traffic_keys(c->keys, &c->keys.read) ||
      !derive_traffic_keys(c->keys, &c->keys.write)) {
    return false;
  }
  c->keys.write.seq = c->server ? records_in(written_now) : 0;
  SSL_free(c->ssl);
  c->ssl = nullptr;
  return true;
}

// The handshake completed in OpenSSL: the TLS 1.3 keys taken over, the flight that completed
// it queued, then the connection counted open, its deadline cleared and its held writes
// released. Returns nullptr, or why it failed: the phase is then still kHandshake, so fail()
// counts one failed handshake (not a completed one and a failed record).
const char* establish(Connection* c) {
  c->resumed = SSL_session_reused(c->ssl) == 1;
  const unsigned char* name = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(c->ssl, &name, &len);
  // The chosen name is always one of the configuration's (a server chooses from its own, a
  // client's server from those offered), which outlive the connection.
  for (const std::string& ours : c->config->alpn_names) {
    if (len && ours.size() == len && std::memcmp(ours.data(), name, len) == 0) c->alpn = &ours;
  }
  const auto micros = static_cast<uint64_t>(monotonic_us() - c->started_us);
  // A max fragment length the client asked for binds every record this side sends (its
  // OpenSSL fails the connection with record_overflow on a longer one): only OpenSSL splits
  // packets into such records, so the connection keeps it.
  const bool fragment_limit = SSL_SESSION_get_max_fragment_length(SSL_get_session(c->ssl)) !=
                              TLSEXT_max_fragment_length_DISABLED;
  if (SSL_version(c->ssl) == TLS1_3_VERSION && !fragment_limit && !hand_over(c, staging())) {
    return "cannot take over the TLS 1.3 keys";
  }
  if (!send_staged(c)) return "no memory for handshake records";
  c->phase = Phase::kOpen;
  count_handshake(c->resumed, micros);
  if (c->armed_deadline) sock_set_deadline(c->fd, 0);
  sock_tlc_write(c->fd, &c->layer, nullptr, 0);  // release the held writes
  return nullptr;
}

// Keeps the input OpenSSL did not read (an unwrap whose output filled its buffer).
bool keep_backlog(Connection* c) {
  if (!c->in_len) return true;
  char* copy = static_cast<char*>(std::malloc(c->in_len));
  if (!copy) return false;
  std::memcpy(copy, c->in, c->in_len);
  c->backlog = copy;
  c->backlog_len = c->in_len;
  c->in_len = 0;
  return true;
}

// Handshake messages after the handshake (RFC 8446 4.6): a KeyUpdate, answered when the peer
// asks; a server's NewSessionTicket, which a client without a session cache drops. A message
// may span records; one may not span a key change.
int post_handshake(Connection* c, const uint8_t* data, std::size_t n) {
  std::vector<uint8_t> joined;
  if (c->message_len) {
    joined.assign(c->message, c->message + c->message_len);
    joined.insert(joined.end(), data, data + n);
    std::free(c->message);
    c->message = nullptr;
    c->message_len = 0;
    data = joined.data();
    n = joined.size();
  }
  while (n >= 4) {
    const std::size_t len = static_cast<std::size_t>(data[1]) << 16 | data[2] << 8 | data[3];
    if (len > kMaxPostHandshakeMessage) return fail(c, "a post-handshake message too long", 0);
    if (n < 4 + len) break;
    const uint8_t type = data[0];
    if (type == 24 && len == 1 && data[4] <= 1 && n == 5) {  // KeyUpdate, last in its record
      if (!update_traffic_secret(c->keys, &c->keys.read)) return fail(c, "KeyUpdate failed", 0);
      // update_requested: one answer, however many requests, before the next record this
      // side sends (RFC 8446 4.6.3), which is where tls_wrap seals it.
      if (data[4] == 1) c->key_update_owed = true;
    } else if (type != 4 || c->server) {  // only a client takes (and drops) tickets
      return fail(c, "an unexpected post-handshake message", 0);
    }
    data += 4 + len;
    n -= 4 + len;
  }
  if (n) {
    c->message = static_cast<uint8_t*>(std::malloc(n));
    if (!c->message) return fail(c, "no memory for a handshake message", 0);
    std::memcpy(c->message, data, n);
    c->message_len = n;
  }
  return 0;
}

// What a protected TLS 1.3 record's header says: its body's length, or false for a header
// that is not one (another content type outside, or longer than the protocol allows).
bool record_body(const uint8_t* header, std::size_t* body) {
  *body = static_cast<std::size_t>(header[3]) << 8 | header[4];
  return header[0] == static_cast<uint8_t>(ContentType::kApplicationData) &&
         *body <= kMaxCiphertext;
}

constexpr char kBadHeader[] = "bad record: not a protected TLS 1.3 record, or too long";
constexpr char kNoMemoryForPartial[] = "no memory for a partial record";

// The first buffer of a partial record: a few segments' worth, so that a record trickling in
// grows it a handful of times on its way to the largest (kHeaderBytes + kMaxCiphertext).
constexpr std::size_t kFirstPartialBytes = 512;
static_assert(kFirstPartialBytes <= kHeaderBytes + kMaxCiphertext);

// Appends n bytes of a record not yet whole to c->partial (the record's bytes never exceed
// kHeaderBytes + kMaxCiphertext), held only while such a record is pending, so an idle
// connection keeps none, and doubled as bytes arrive: a peer that sends one byte of a record
// ties up 512 bytes, not a record's worth. Each received byte is copied here once, and the
// growth moves at most as many bytes again, however thinly the record trickles in.
bool keep_partial(Connection* c, const uint8_t* data, std::size_t n) {
  const std::size_t need = c->partial_len + n;
  if (need > c->partial_cap) {
    const std::size_t cap = std::min(std::max({kFirstPartialBytes, 2 * c->partial_cap, need}),
                                     kHeaderBytes + kMaxCiphertext);
    auto* grown = static_cast<uint8_t*>(std::realloc(c->partial, cap));
    if (!grown) return false;
    t_partial_bytes += c->partial_len;  // realloc may have moved them
    c->partial = grown;
    c->partial_cap = cap;
  }
  std::memcpy(c->partial + c->partial_len, data, n);
  c->partial_len += n;
  t_partial_bytes += n;
  return true;
}

// An opened record's content (TLS 1.3, after hand_over): application data appended to
// out[*produced..max_len), an alert, a post-handshake message. plain may lie in out, at or
// after *produced. Returns 0, 1 (close_notify) or -1 (failed).
int take_record(Connection* c, ContentType type, const uint8_t* plain, std::size_t len,
                uint8_t* out, std::size_t max_len, std::size_t* produced) {
  if (type == ContentType::kApplicationData && len) {
    if (len > max_len - *produced) return fail(c, "more plaintext than the read buffer", 0);
    std::memmove(out + *produced, plain, len);
    *produced += len;
    c->records_without_data = 0;
    return 0;
  }
  // user_canceled (RFC 8446 6.1) is a closure alert, not an error one, whatever its level: a
  // close_notify should follow it (JDK 11 sends the pair at every close). Skipped, as OpenSSL
  // (which has it before the hand-over), BoringSSL and LibreSSL skip it; counted below, like
  // an empty record, so a stream of them cannot keep a read going.
  const bool user_canceled = type == ContentType::kAlert && len == 2 && plain[1] == 90;
  if (type == ContentType::kAlert && !user_canceled) {
    if (len == 2 && plain[1] == 0) {  // close_notify: what follows it is ignored
      c->phase = Phase::kEnded;
      return 1;
    }
    std::string why_alert = "the peer sent alert " + std::to_string(len == 2 ? plain[1] : 0);
    return fail(c, why_alert.c_str(), 0);
  }
  if (++c->records_without_data > kMaxRecordsWithoutData) {
    return fail(c, "too many records without application data", 0);
  }
  if (type == ContentType::kHandshake) {
    if (post_handshake(c, plain, len) < 0) return -1;
  } else if (type != ContentType::kApplicationData && !user_canceled) {  // empty: dropped
    return fail(c, "bad record: an unexpected content type", 0);
  }
  return 0;
}

// Opens the whole records of src[0..n) (TLS 1.3, after hand_over) and appends their
// application data to out[*produced..max_len); keeps an incomplete last record in
// c->partial, which must be empty. src may lie in out, at or after *produced: each record's
// plaintext is shorter than the record, so output never overtakes input. Returns 0, 1
// (close_notify) or -1 (failed).
int open_records(Connection* c, uint8_t* src, std::size_t n, uint8_t* out, std::size_t max_len,
                 std::size_t* produced) {
  std::size_t at = 0;
  while (n - at >= kHeaderBytes) {
    uint8_t* rec = src + at;
    std::size_t body = 0;
    if (!record_body(rec, &body)) return fail(c, kBadHeader, 0);
    if (n - at < kHeaderBytes + body) break;
    ContentType type;
    std::size_t len = 0;
    const char* why = nullptr;
    if (!open(c->keys, rec, kHeaderBytes + body, &type, &len, &why)) {
      return fail(c, (std::string("bad record: ") + why).c_str(), 0);
    }
    at += kHeaderBytes + body;
    const int r = take_record(c, type, rec + kHeaderBytes, len, out, max_len, produced);
    if (r != 0) return r;
  }
  if (n > at && !keep_partial(c, src + at, n - at)) {
    return fail(c, kNoMemoryForPartial, 0);
  }
  return 0;
}

// Completes the record pending in c->partial with the first bytes of in[0..n), opens it and
// takes its content into in itself (out), first moving what follows the record out of its
// plaintext's way. *rest, *rest_len: the input after the record (none while the record is
// still incomplete: then it took all of it). Returns 0, 1 (close_notify) or -1 (failed).
int finish_partial(Connection* c, uint8_t* in, std::size_t n, std::size_t max_len,
                   uint8_t** rest, std::size_t* rest_len, std::size_t* produced) {
  *rest_len = 0;
  std::size_t used = 0;
  if (c->partial_len < kHeaderBytes) {
    used = std::min(kHeaderBytes - c->partial_len, n);
    if (!keep_partial(c, in, used)) return fail(c, kNoMemoryForPartial, 0);
    if (c->partial_len < kHeaderBytes) return 0;
  }
  std::size_t body = 0;
  if (!record_body(c->partial, &body)) return fail(c, kBadHeader, 0);
  const std::size_t whole = kHeaderBytes + body;
  const std::size_t take = std::min(whole - c->partial_len, n - used);
  if (!keep_partial(c, in + used, take)) return fail(c, kNoMemoryForPartial, 0);
  used += take;
  if (c->partial_len < whole) return 0;
  ContentType type;
  std::size_t len = 0;
  const char* why = nullptr;
  if (!open(c->keys, c->partial, whole, &type, &len, &why)) {
    return fail(c, (std::string("bad record: ") + why).c_str(), 0);
  }
  c->partial_len = 0;
  *rest = in + used;
  *rest_len = n - used;
  if (*rest_len && len > used) {  // the plaintext would overwrite the records behind it
    std::vector<char>& aside = scratch();
    aside.assign(*rest, *rest + *rest_len);
    t_partial_bytes += *rest_len;
    *rest = reinterpret_cast<uint8_t*>(aside.data());
  }
  return take_record(c, type, c->partial + kHeaderBytes, len, in, max_len, produced);
}

// unwrap once the SSL object is gone: records opened in place, a pending partial record
// completed first.
int unwrap_records(Connection* c, uint8_t* buffer, ssize_t* len, std::size_t max_len) {
  std::size_t n = static_cast<std::size_t>(*len);
  // No new input (the engine calls again at EAGAIN and at EOF): a pending record cannot have
  // completed, and the layer holds no whole record.
  if (n == 0) return 0;
  uint8_t* src = buffer;
  std::size_t produced = 0;
  if (c->partial_len) {
    const int r = finish_partial(c, buffer, n, max_len, &src, &n, &produced);
    if (r != 0) {  // c may be gone (see fail())
      *len = static_cast<ssize_t>(produced);
      return r;
    }
  }
  const int r = n ? open_records(c, src, n, buffer, max_len, &produced) : 0;
  if (r == 0 && !c->partial_len && c->partial) {  // no record pending: give its buffer back
    std::free(c->partial);
    c->partial = nullptr;
    c->partial_cap = 0;
  }
  *len = static_cast<ssize_t>(produced);
  return r;
}

int tls_unwrap(int, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* c = static_cast<Connection*>(udata);
  if (c->phase == Phase::kFailed) return -1;
  if (c->phase == Phase::kEnded || c->left) {
    *len = 0;
    return 1;
  }
  auto* out = static_cast<uint8_t*>(buffer);
  if (!c->ssl) return unwrap_records(c, out, len, max_len);
  // The input is copied out first: plaintext is written over the buffer it came in.
  std::vector<char>& input = scratch();
  input.clear();
  if (c->backlog) {
    input.assign(c->backlog, c->backlog + c->backlog_len);
    std::free(c->backlog);
    c->backlog = nullptr;
    c->backlog_len = 0;
  }
  input.insert(input.end(), out, out + *len);
  c->in = input.data();
  c->in_len = input.size();
  *len = 0;
  clear_errors();
  if (c->phase == Phase::kHandshake) {
    const int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      const int e = SSL_get_error(c->ssl, r);
      if (!send_staged(c)) return fail(c, "no memory for handshake records", 0);
      if (e == SSL_ERROR_WANT_READ) return 0;  // OpenSSL keeps a partial record itself
      if (e == SSL_ERROR_ZERO_RETURN) {
        // The peer's close_notify: it left, as with an EOF, and is not at fault. The stream
        // ends (the connection closes as the peer's close); on_clear counts the handshake as
        // closed (SOCK_TLS_FAIL_CLOSED) and held writes go with the connection.
        c->left = true;
        return 1;
      }
      return fail(c, "handshake failed", e);
    }
    if (const char* why = establish(c)) return fail(c, why, 0);
    if (!c->ssl) {  // TLS 1.3: the records that came behind the handshake are ours
      // (They lie in the thread's scratch(); c is not touched after a failure: see fail().)
      auto* rest = reinterpret_cast<uint8_t*>(const_cast<char*>(c->in));
      const std::size_t rest_len = c->in_len;
      c->in_len = 0;
      std::size_t produced = 0;
      const int r2 = open_records(c, rest, rest_len, out, max_len, &produced);
      *len = static_cast<ssize_t>(produced);
      return r2;
    }
  }
  std::size_t produced = 0;
  while (produced < max_len && c->phase == Phase::kOpen) {
    const int want = static_cast<int>(std::min<std::size_t>(max_len - produced, INT_MAX));
    const int r = SSL_read(c->ssl, out + produced, want);
    if (r > 0) {
      produced += static_cast<std::size_t>(r);
      continue;
    }
    const int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      c->phase = Phase::kEnded;  // close_notify: the peer sends no more
      break;
    }
    send_staged(c);
    return fail(c, "bad record", e);
  }
  // What OpenSSL answered on its own, counted before it is queued (kMaxUnreadAnswers).
  if (!staging().empty()) {
    if (sock_pending(c->fd) == 0) c->unread_answers = 0;  // the peer took the earlier ones
    c->unread_answers += static_cast<unsigned>(records_in(staging()));
    if (c->unread_answers > kMaxUnreadAnswers) {
      return fail(c, "too many records answered while the peer reads none", 0);
    }
  }
  if (!send_staged(c)) return fail(c, "no memory for TLS records", 0);
  if (!keep_backlog(c)) return fail(c, "no memory for received records", 0);
  *len = static_cast<ssize_t>(produced);
  return c->phase == Phase::kEnded ? 1 : 0;
}

int tls_wrap(int, Packet* packet, void* udata) {
  auto* c = static_cast<Connection*>(udata);
  if (c->phase == Phase::kHandshake) return 1;  // held until establish() asks for a flush
  if (c->phase == Phase::kFailed) return -1;
  const auto n = static_cast<std::size_t>(packet->length);
  if (c->shut) {  // a write that raced the close: nothing may follow close_notify
    packet->length = 0;
    return 0;
  }
  if (n == 0) return 0;
  if (n > BUFFER_FILE_READ_SIZE) {
    return fail(c, "a packet of more than BUFFER_FILE_READ_SIZE bytes cannot be one TLS record",
                0);
  }
  auto* mem = reinterpret_cast<uint8_t*>(packet->internal_memory);
  // An owed KeyUpdate goes first, in the same packet, sealed under the old key.
  const std::size_t ahead = !c->ssl && c->key_update_owed ? kKeyUpdateRecord : 0;
  if (!c->ssl) {  // sealed in place, behind room for the header (and the KeyUpdate)
    std::memmove(mem + ahead + kHeaderBytes, packet->buffer, n);  // buffer may be mem itself
  } else {
    std::vector<char>& plain = scratch();
    plain.assign(static_cast<const char*>(packet->buffer),
                 static_cast<const char*>(packet->buffer) + n);
    c->sink = packet->internal_memory;
  }
  if (packet->metadata.external) {  // a sock_send_packet buffer: the record replaces it
    std::free(packet->buffer);
    packet->metadata.external = 0;
  }
  packet->buffer = packet->internal_memory;
  if (!c->ssl) {
    if (ahead) {
      const uint8_t answer[] = {24, 0, 0, 1, 0};  // KeyUpdate, update_not_requested
      std::memcpy(mem + kHeaderBytes, answer, sizeof answer);
      if (seal(c->keys, ContentType::kHandshake, mem, sizeof answer) != ahead ||
          !update_traffic_secret(c->keys, &c->keys.write)) {
        return fail(c, "KeyUpdate failed", 0);
      }
      c->key_update_owed = false;
    }
    const std::size_t sealed = seal(c->keys, ContentType::kApplicationData, mem + ahead, n);
    if (!sealed) return fail(c, "cannot encrypt a record", 0);
    packet->length = static_cast<ssize_t>(ahead + sealed);
    return 0;
  }
  clear_errors();
  c->sink_len = 0;
  const int r = SSL_write(c->ssl, scratch().data(), static_cast<int>(n));
  c->sink = nullptr;
  if (r != static_cast<int>(n)) return fail(c, "cannot encrypt a record", SSL_get_error(c->ssl, r));
  packet->length = static_cast<ssize_t>(c->sink_len);
  return 0;
}

void tls_before_close(int, sockTLC* layer) {
  auto* c = static_cast<Connection*>(layer->udata);
  if ((c->phase != Phase::kOpen && c->phase != Phase::kEnded) || c->shut) return;
  c->shut = true;  // the peer's answering close_notify is not awaited
  if (!c->ssl) {
    const uint8_t close_notify[] = {1, 0};  // warning, close_notify
    send_record(c, ContentType::kAlert, close_notify, sizeof close_notify);
    return;
  }
  clear_errors();
  SSL_shutdown(c->ssl);
  send_staged(c);
}

void tls_on_clear(int, sockTLC* layer) {
  auto* c = static_cast<Connection*>(layer->udata);
  if (c->phase == Phase::kHandshake) {
    count_failure(sock_close_reason() == SOCK_CLOSE_TIMEOUT ? SOCK_TLS_FAIL_TIMEOUT
                                                            : SOCK_TLS_FAIL_CLOSED);
  }
  count_open(-1);
  SSL_free(c->ssl);
  std::free(c->backlog);
  std::free(c->partial);
  std::free(c->message);
  OPENSSL_cleanse(&c->keys, sizeof c->keys);
  release(c->config);
  delete c;
}

int start(int fd, SockTLS* config, bool server, const char* server_name) {
  if (!config || config->server != server) {
    errno = EINVAL;
    return -1;
  }
  const engine::FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;  // EBADF, EPERM
  // Without a reactor, what the layer queues from inside sock_read (the flight that ends the
  // handshake, then the writes held through it) would wait for the application's sock_flush,
  // which it has no reason to call, and no deadline could bound the handshake. Flushing from
  // the layer is no way out: unwrap's input lies in the scratch() that wrap reuses. The one
  // engine internal the layer reads: the public API has no side-effect-free way to ask.
  if (!engine::attached_owner(*slot)) {
    errno = EINVAL;
    return -1;
  }
  if (sock_tlc_get(fd)) {
    errno = EINVAL;  // TLS must be the lowest layer: add the others after it
    return -1;
  }
  // Checked here, not left to OpenSSL, whose refusal would say only "ssl3 ext invalid
  // servername" (RFC 6066 3: a HostName of 1 to 2^16-1 bytes; OpenSSL takes up to 255).
  if (server_name && (!*server_name || std::strlen(server_name) > TLSEXT_MAXLEN_host_name)) {
    set_error("a server name must be 1 to " + std::to_string(TLSEXT_MAXLEN_host_name) +
              " bytes, not " + std::to_string(std::strlen(server_name)));
    errno = EINVAL;
    return -1;
  }
  auto* c = new (std::nothrow) Connection{};
  BIO* bio = bio_method() ? BIO_new(bio_method()) : nullptr;
  SSL* ssl = c && bio ? SSL_new(config->ctx) : nullptr;
  if (!ssl) {
    BIO_free(bio);
    delete c;
    set_error("cannot create a TLS connection");
    errno = ENOMEM;
    return -1;
  }
  BIO_set_data(bio, c);
  SSL_set_bio(ssl, bio, bio);  // one reference, taken by ssl
  c->layer = sockTLC{nullptr, c, tls_wrap, tls_unwrap, tls_on_clear, tls_before_close};
  SSL_set_app_data(ssl, c);  // for the keylog callback
  c->ssl = ssl;
  c->config = config;
  c->fd = fd;
  c->server = server;
  c->started_us = monotonic_us();
  bool ok = true;
  if (server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    if (server_name) {
      // SNI only for a DNS name (RFC 6066); the certificate is checked against IPs too. The
      // name's length was checked: what fails now is memory.
      const bool is_ip = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name) == 1;
      ok = is_ip || (SSL_set_tlsext_host_name(ssl, server_name) == 1 &&
                     SSL_set1_host(ssl, server_name) == 1);
      // The queue is the thread's: left there, OpenSSL's words would end the next reason.
      if (!ok) set_error("no memory for the server name");
    }
  }
  if (!ok || sock_tlc_add(fd, &c->layer) < 0) {
    const int err = ok ? errno : ENOMEM;
    SSL_free(ssl);
    delete c;
    errno = err;
    return -1;
  }
  // From here the layer owns c: on_clear frees it.
  retain(config);
  count_open(1);
  int err = 0;
  // The timeout is read once, here: establish() and the failure below clear only a deadline
  // armed here. `armed` is a copy, because c is not read after fail() (see there).
  bool armed = false;
  if (config->handshake_ms) {
    if (sock_set_deadline(fd, config->handshake_ms) < 0) {
      err = errno;  // ENOMEM: the fd is attached
      set_error("no memory for the handshake deadline");
    } else {
      armed = c->armed_deadline = true;
    }
  }
  if (!err && !server) {
    clear_errors();
    const int r = SSL_do_handshake(ssl);  // stages the ClientHello
    if (r != 1 && SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ) {
      fail(c, "cannot start the handshake", SSL_get_error(ssl, r));
      err = EPROTO;
    } else if (!send_staged(c)) {
      err = ENOMEM;
      set_error("no memory for the ClientHello");
    }
  }
  if (err) {
    if (armed) sock_set_deadline(fd, 0);
    sock_tlc_set(fd, nullptr);  // on_clear frees c; the fd stays as it was
    errno = err;
    return -1;
  }
  return 0;
}

}  // namespace

uint64_t partial_record_bytes_copied() { return t_partial_bytes; }

void on_keylog(const SSL* ssl, const char* line) {
  auto* c = static_cast<Connection*>(SSL_get_app_data(ssl));
  constexpr char kClient[] = "CLIENT_TRAFFIC_SECRET_0 ";
  constexpr char kServer[] = "SERVER_TRAFFIC_SECRET_0 ";
  const bool client = std::strncmp(line, kClient, sizeof kClient - 1) == 0;
  if (!c || (!client && std::strncmp(line, kServer, sizeof kServer - 1) != 0)) return;
  const char* hex = std::strrchr(line, ' ');
  if (hex) keep_secret(c, client, hex + 1);
}

}  // namespace tls

extern "C" {

int sock_tls_accept(int fd, struct SockTLS* tls) { return tls::start(fd, tls, true, nullptr); }

int sock_tls_connect(int fd, struct SockTLS* tls, const char* server_name) {
  return tls::start(fd, tls, false, server_name);
}

int sock_tls_established(int fd) {
  const tls::Connection* c = tls::of(fd);
  if (!c) return -1;
  return c->phase == tls::Phase::kOpen || c->phase == tls::Phase::kEnded ? 1 : 0;
}

const char* sock_tls_alpn(int fd) {
  const tls::Connection* c = tls::of(fd);
  return c && c->alpn ? c->alpn->c_str() : nullptr;
}

int sock_tls_resumed(int fd) {
  const tls::Connection* c = tls::of(fd);
  if (!c) return -1;
  return c->resumed ? 1 : 0;
}

}  // extern "C"
