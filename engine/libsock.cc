// The libsock C API (libsock.h): thin entry points. Each finds where its call runs and hands
// it to the engine: routing.h (the owner thread, or a post to it), connection.h (open,
// attach, close), read_path.h, write_path.h, flush.h; the per-connection settings and the
// transport-layer calls act on the slot here, on the owner thread.
#include "engine/libsock.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "engine/accept.h"
#include "engine/connection.h"
#include "engine/fd_table.h"
#include "engine/flush.h"
#include "engine/handle.h"
#include "engine/metrics.h"
#include "engine/profile.h"
#include "engine/reactor.h"
#include "engine/read_path.h"
#include "engine/routing.h"
#include "engine/socket_ops.h"
#include "engine/tlc.h"
#include "engine/write_path.h"
#include "engine/write_queue.h"

using engine::FdSlot;

extern "C" {

int sock_set_non_block(int fd) { return engine::set_non_blocking(fd); }

ssize_t sock_max_capacity(void) {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) < 0) return -1;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  const rlim_t table = engine::kMaxFds;
  return static_cast<ssize_t>(limit.rlim_cur < table ? limit.rlim_cur : table);
}

int sock_listen(const char* address, const char* port) {
  return engine::listen_socket(address, port, false);
}

int8_t init_socklib(size_t max_fd) {
  if (max_fd > engine::kMaxFds) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int sock_open(struct Reactor* owner, int fd) { return engine::open_connection(owner, fd, false); }

int sock_attach(struct Reactor* owner, int fd) { return engine::attach_connection(owner, fd); }

int sock_accept(struct Reactor* owner, int server_fd) {
  // A listener that another thread's reactor watches: its slot's flags are that thread's.
  const int client = engine::target_of(server_fd).remote
                         ? engine::accept_on_foreign_listener(server_fd)
                         : engine::accept_connection(server_fd);
  if (client < 0) return -1;
  if (engine::open_known_fd(owner, client, false) < 0) {
    const int err = errno;
    close(client);
    errno = err;
    return -1;
  }
  return client;
}

int sock_connect(struct Reactor* owner, const char* address, const char* port) {
  addrinfo* list = engine::resolve(address, port, false);
  if (!list) return -1;
  int fd = -1;
  int err = EADDRNOTAVAIL;
  for (addrinfo* ai = list; ai && fd < 0; ai = ai->ai_next) {
    fd = engine::open_stream_socket(ai->ai_family);
    if (fd < 0) {
      err = errno;
      continue;
    }
    engine::set_no_delay(fd);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(list);
  if (fd < 0) {
    errno = err;
    return -1;
  }
  // Even a connect that finished at once reports through on_ready: adding a writable fd to
  // epoll raises EPOLLOUT immediately.
  if (engine::open_known_fd(owner, fd, true) < 0) {
    err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

void sock_clear(int fd) { engine::clear_connection(fd); }

int sock_status(int fd) {
  // The generation alone, not the slot's flags, which the thread holding fd may be writing.
  const engine::Target t = engine::target_of(fd);
  if (!t.slot || !engine::is_open_generation(t.generation)) {
    errno = EBADF;
    return -1;
  }
  return fcntl(fd, F_GETFL);
}

ssize_t sock_read(int fd, void* buf, size_t count) { return engine::read_input(fd, buf, count); }

ssize_t sock_write2_fn(struct SockWriteOpt opt) { return engine::write_data(opt); }

ssize_t sock_flush(int fd) { return engine::flush_output(fd); }

void sock_close(struct Reactor* reactor, int fd) { engine::close_connection(reactor, fd, true, 0); }

void sock_force_close(struct Reactor* reactor, int fd) {
  engine::close_connection(reactor, fd, false, 0);
}

intptr_t sock_fd2uuid(int fd) {
  FdSlot* slot = engine::fd_slot(fd);
  const uint32_t g = slot ? slot->generation.load(std::memory_order_acquire) : 0;
  if (!engine::is_open_generation(g)) {
    errno = EBADF;
    return -1;
  }
  return engine::make_uuid(fd, g);
}

int sock_uuid2fd(intptr_t uuid) {
  const int fd = engine::uuid_fd(uuid);
  FdSlot* slot = engine::fd_slot(fd);
  const uint32_t g = slot ? slot->generation.load(std::memory_order_acquire) : 0;
  if (uuid < 0 || !engine::is_open_generation(g) || !engine::uuid_matches(uuid, g)) {
    errno = EBADF;
    return -1;
  }
  return fd;
}

// The handle is checked twice: open now (sock_uuid2fd), and still this connection when the
// close runs (close_connection compares it with the generation it reads itself), so a number
// closed and reused in between is never touched.
int sock_close_uuid(intptr_t uuid) {
  const int fd = sock_uuid2fd(uuid);
  return fd < 0 ? -1 : engine::close_connection(nullptr, fd, true, uuid);
}

int sock_close_lingering(struct Reactor* reactor, int fd) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;
  if (!engine::attached_owner(*slot)) {
    errno = EINVAL;  // the wait for the peer's EOF is a reactor's
    return -1;
  }
  if (engine::SlotExtra* extra = engine::slot_extra_make(*slot)) {
    if (extra->linger == engine::SlotExtra::Linger::kNo) {
      extra->linger = engine::SlotExtra::Linger::kWanted;
    }
  }
  sock_close(reactor, fd);
  return 0;
}

int sock_force_close_uuid(intptr_t uuid) {
  const int fd = sock_uuid2fd(uuid);
  return fd < 0 ? -1 : engine::close_connection(nullptr, fd, false, uuid);
}

enum SockCloseReason sock_close_reason(void) {
  return static_cast<SockCloseReason>(engine::current_close_reason());
}

int sock_set_timeout(int fd, unsigned idle_ms) {
  FdSlot* slot = engine::owner_thread_slot(fd);  // owner thread, open fd
  if (!slot) return -1;
  engine::Reactor* owner = engine::attached_owner(*slot);
  if (!owner) {
    errno = EINVAL;  // timers belong to a reactor
    return -1;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  extra->idle_ticks = engine::Reactor::ticks_of(idle_ms);
  slot->flags |= engine::kOwnIdle;
  owner->stamp_activity(*slot);
  owner->arm_timer(fd, *slot, false);
  return 0;
}

int sock_set_deadline(int fd, unsigned ms) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;
  engine::Reactor* owner = engine::attached_owner(*slot);
  if (!owner) {
    errno = EINVAL;
    return -1;
  }
  if (!ms) {
    if (slot->extra) slot->extra->deadline_tick = 0;
    engine::slot_extra_trim(*slot);
    return 0;  // a wheel entry already filed re-checks when it fires
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  // Counted from the end of the current tick, so it never fires before `ms` have passed.
  extra->deadline_tick = owner->now_tick() + 1 + engine::Reactor::ticks_of(ms);
  owner->arm_timer(fd, *slot, false);
  return 0;
}

int sock_set_watermarks(int fd, size_t high, size_t low) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;
  if (high > UINT32_MAX || low > high || (!high && low)) {
    errno = EINVAL;
    return -1;
  }
  if (!high) {
    if (slot->extra) slot->extra->high_watermark = slot->extra->low_watermark = 0;
    engine::slot_extra_trim(*slot);
    return 0;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  extra->high_watermark = static_cast<uint32_t>(high);
  extra->low_watermark = static_cast<uint32_t>(low);
  return 0;
}

ssize_t sock_pending(int fd) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  return slot ? static_cast<ssize_t>(slot->queued_bytes) : -1;
}

struct Packet* sock_checkout_packet(void) { return engine::packet_new(engine::pool_for(nullptr)); }

ssize_t sock_send_packet(int fd, struct Packet* packet) { return engine::send_packet(fd, packet); }

void sock_free_packet(struct Packet* packet) { engine::packet_chain_free(packet); }

struct sockTLC* sock_tlc_get(int fd) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  return slot ? engine::slot_tlc(*slot) : nullptr;
}

int sock_tlc_set(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;
  if (engine::tlc_depth(tlc) > engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  engine::SlotExtra* extra = tlc ? engine::slot_extra_make(*slot) : slot->extra;
  if (tlc && !extra) return -1;
  sockTLC* old = engine::slot_tlc(*slot);
  if (extra) extra->tlc = tlc;
  engine::slot_extra_trim(*slot);
  engine::tlc_chain_changed(fd, engine::ChainChange::kReplaced);
  engine::tlc_clear_chain(fd, old);
  return 0;
}

int sock_tlc_add(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::owner_thread_slot(fd);
  if (!slot) return -1;
  if (!tlc || engine::tlc_depth(engine::slot_tlc(*slot)) >= engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  tlc->next = extra->tlc;
  extra->tlc = tlc;
  engine::tlc_chain_changed(fd, engine::ChainChange::kPushed);
  return 0;
}

int sock_tlc_write(int fd, struct sockTLC* from, const void* data, size_t length) {
  return engine::tlc_write(fd, from, data, length);
}

int sock_pool_stats(struct Reactor* reactor, struct SockPoolStats* stats) {
  if (!stats) {
    errno = EINVAL;
    return -1;
  }
  alloc::BlockPool* pool = &engine::fallback_pool();
  uint64_t queued = 0;
  if (reactor) {
    engine::Reactor* r = engine::Reactor::of(reactor, false);
    if (!r) {
      errno = EINVAL;
      return -1;
    }
    pool = &r->pool();
    queued = r->queued_total();
  }
  const alloc::PoolCounters c = pool->counters();
  *stats = SockPoolStats{c.checkouts,   c.returns,    c.hits,        c.misses,
                         c.outstanding, c.high_water, c.chunk_bytes, queued};
  return 0;
}

int sock_stats(struct Reactor* reactor, struct SockStats* stats) {
  engine::Reactor* r = reactor ? engine::Reactor::of(reactor, false) : nullptr;
  if (!r || !stats || stats->size < offsetof(SockStats, checkouts)) {
    errno = EINVAL;
    return -1;
  }
  const engine::ReactorStats s = engine::reactor_stats(r);
  const alloc::PoolCounters& p = s.pool;
  const SockStats full{sizeof(SockStats), 0,        p.checkouts,      p.returns,
                       p.remote_returns,  p.hits,   p.misses,         p.chunks_freed,
                       p.refusals,        p.alloc_failures, p.outstanding, p.high_water,
                       p.chunks,          p.chunk_bytes,    s.packet_bytes, s.queued_bytes,
                       s.connections,     s.writes_direct,  s.writes_queued, s.writev_calls,
                       s.writev_packets,  s.sendfile_calls,   s.trims, s.loop_iterations,
                       s.loop_busy_us,    s.loop_longest_busy_us};
  const uint32_t n = std::min<uint32_t>(stats->size, sizeof full);
  std::memcpy(stats, &full, n);
  stats->size = n;
  return 0;
}

int sock_profile(int on) {
  const bool was = engine::profiling_on();
  if (on >= 0) engine::set_profiling(on != 0);
  return was ? 1 : 0;
}

ssize_t sock_metrics(struct Reactor* const* reactors, size_t count, int format,
                     const char* prefix, char* buf, size_t capacity) {
  if ((!reactors && count) || (!buf && capacity) ||
      (format != SOCK_METRICS_PROMETHEUS && format != SOCK_METRICS_JSON)) {
    errno = EINVAL;
    return -1;
  }
  std::vector<const engine::Reactor*> rs;
  std::string text;
  try {
    rs.resize(count);
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return -1;
  }
  for (size_t i = 0; i < count; ++i) {
    rs[i] = reactors[i] ? engine::Reactor::of(reactors[i], false) : nullptr;
  }
  const auto f = format == SOCK_METRICS_JSON ? engine::MetricsFormat::kJson
                                             : engine::MetricsFormat::kPrometheus;
  if (!engine::write_metrics(rs.data(), count, f, prefix, &text)) return -1;
  if (capacity) {
    const size_t n = std::min(text.size(), capacity - 1);
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  return static_cast<ssize_t>(text.size());
}

size_t sock_packet_footprint(void) {
  const alloc::BlockPool& pool = engine::fallback_pool();
  return alloc::BlockPool::bytes_per_block(pool.chunk_bytes(), pool.blocks_per_chunk());
}

}  // extern "C"
