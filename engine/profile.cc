#include "engine/profile.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/fd_table.h"
#include "engine/handle.h"
#include "libsock.h"

namespace engine {
namespace internal {

ProfilingSwitch g_profiling;

namespace {
// LIBSOCK_PROFILE=1 (any value but empty or "0") switches profiling on before main().
const bool g_from_environment = [] {
  const char* v = std::getenv("LIBSOCK_PROFILE");
  const bool on = v && *v && std::strcmp(v, "0") != 0;
  if (on) g_profiling.on.store(true, std::memory_order_relaxed);
  return on;
}();
}  // namespace

}  // namespace internal

void set_profiling(bool on) {
  // The epoch moves before the switch goes on, so a hook that sees it on sees the new epoch
  // too (or, racing, records one observation against the old state).
  if (on && !profiling_on()) internal::g_profiling.epoch.fetch_add(1, std::memory_order_relaxed);
  internal::g_profiling.on.store(on, std::memory_order_relaxed);
}

void Profile::restart(uint32_t epoch) {
  epoch_ = epoch;
  conns_.clear();
  std::lock_guard<std::mutex> lock(top_mutex_);
  top_count_ = 0;
}

Profile::Conn* Profile::conn(int fd) {
  if (fd < 0) return nullptr;
  const auto i = static_cast<std::size_t>(fd);
  if (i >= conns_.size()) {
    try {
      conns_.resize(std::max(i + 1, conns_.size() * 2));
    } catch (const std::bad_alloc&) {
      return nullptr;  // profiling loses this connection, the connection loses nothing
    }
  }
  return &conns_[i];
}

void Profile::opened(int fd, int64_t now_ms) {
  if (Conn* c = conn(fd)) *c = Conn{0, -1, now_ms};
}

void Profile::queued(int fd, uint64_t queued_bytes, int64_t now_us) {
  if (!queued_bytes) return;  // a close with nothing queued, say: no queue started
  Conn* c = conn(fd);
  if (!c) return;
  if (c->opened_ms < 0) c->opened_ms = now_us / 1000;  // opened before profiling began
  c->peak = std::max(c->peak, queued_bytes);
  if (c->queued_since_us < 0) c->queued_since_us = now_us;
}

void Profile::drained(int fd, int64_t now_us) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= conns_.size()) return;
  Conn& c = conns_[static_cast<std::size_t>(fd)];
  if (c.queued_since_us < 0) return;
  queue_time_us.observe(static_cast<uint64_t>(std::max<int64_t>(now_us - c.queued_since_us, 0)));
  c.queued_since_us = -1;
}

void Profile::closed(int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= conns_.size()) return;
  Conn& c = conns_[static_cast<std::size_t>(fd)];
  if (c.opened_ms >= 0) peak_queued_bytes.observe(c.peak);
  c = Conn{};
}

void Profile::refresh_top(const Reactor* self, int64_t now_ms) {
  TopConnection found[kTopConnections];
  const FdSlot* slots[kTopConnections];  // found[i]'s
  std::size_t n = 0;
  // Every slot self holds, not only the connections seen since profiling began: a reader
  // that stalled before it (its queue full, nothing written since) is what the list is for.
  // Another reactor's slots are skipped on their owner alone (an atomic load), before any
  // field that thread writes is read: 20,000 fds are 1.3 MB, read once a second.
  fd_table_for_each([&](int fd, FdSlot& slot) {
    if (load_owner(slot) != self || !slot.queued_bytes) return;
    Conn* c = conn(fd);
    if (!c) return;
    if (c->opened_ms < 0) {  // held since before profiling began: first seen now
      c->opened_ms = now_ms;
      c->peak = slot.queued_bytes;
    }
    if (n == kTopConnections && slot.queued_bytes <= found[n - 1].queued_bytes) return;
    TopConnection t;
    t.uuid = make_uuid(fd, slot.generation.load(std::memory_order_relaxed));
    t.queued_bytes = slot.queued_bytes;
    t.age_ms = static_cast<uint64_t>(std::max<int64_t>(now_ms - c->opened_ms, 0));
    // Insertion into the short sorted list: kTopConnections is small.
    std::size_t at = n < kTopConnections ? n++ : n - 1;
    while (at > 0 && found[at - 1].queued_bytes < t.queued_bytes) {
      found[at] = found[at - 1];
      slots[at] = slots[at - 1];
      --at;
    }
    found[at] = t;
    slots[at] = &slot;
  });
  // Packets of the connections listed at the end only (not of each that entered the list on
  // the way: in ascending order, every one), and up to kTopPacketsCounted each.
  for (std::size_t i = 0; i < n; ++i) {
    for (const Packet* p = slots[i]->head; p && found[i].packets < kTopPacketsCounted;
         p = p->metadata.next) {
      ++found[i].packets;
    }
  }
  std::lock_guard<std::mutex> lock(top_mutex_);
  std::copy(found, found + n, top_);
  top_count_ = n;
}

std::size_t Profile::top(TopConnection* out, std::size_t max) const {
  std::lock_guard<std::mutex> lock(top_mutex_);
  const std::size_t n = std::min(max, top_count_);
  std::copy(top_, top_ + n, out);
  return n;
}

}  // namespace engine
