// File: engine/defaults.h
// The engine's and the sharded server's default settings, named once here with their reasons.
// The public headers state the same values in words (libreact.h, shards/server.h); a setting of
// 0 in ReactorLimits or SockServerSettings means "this default".
#ifndef ENGINE_DEFAULTS_H_
#define ENGINE_DEFAULTS_H_

#include <cstddef>
#include <cstdint>

namespace engine {

// How long a stopping reactor lets queued output drain before closing what is left: long
// enough for any reader that is reading, short enough that a peer that never reads cannot
// hold a stop (libreact.h, reactor_stop; SockServerSettings.stop_timeout_ms).
inline constexpr int64_t kStopDrainMs = 5000;

// A lingering close (linger.cc) waits for the peer's EOF until the peer has been quiet this
// long (it sent nothing, and took nothing of what the kernel still holds for it), or at most
// kLingerMaxMs in all. A peer that read its response and closes takes one round trip; one
// still sending or still reading the response keeps the fd until that ends, within the cap.
// nginx's lingering_timeout and lingering_time. A stop waits for a linger no longer than
// for any drain (kStopDrainMs).
inline constexpr int64_t kLingerMs = 5000;
inline constexpr int64_t kLingerMaxMs = 30 * 1000;
static_assert(kLingerMs < kLingerMaxMs);

// Backpressure (ReactorLimits): a megabyte owed to a peer is plenty of pipelining, and
// resuming at a quarter leaves room to refill before the socket runs dry.
inline constexpr std::size_t kHighWatermark = std::size_t{1} << 20;
inline constexpr std::size_t kLowWatermark = kHighWatermark / 4;
static_assert(kLowWatermark < kHighWatermark);
// A low watermark may not pass the high one in effect (a high of 0 stands for the default):
// a queue that paused above it would resume at once. Both reactor_set_limits and
// sock_server_start refuse the pair with EINVAL.
inline constexpr bool watermarks_valid(std::size_t high, std::size_t low) {
  return low <= (high ? high : kHighWatermark);
}

// The sharded server's idle timeout (SockServerSettings.idle_timeout_ms): a plain reactor has
// none, but a server facing the network must not keep a silent connection's fd for ever.
inline constexpr unsigned kServerIdleTimeoutMs = 30 * 1000;

// Connections accepted per listener wakeup before other work runs (SockServerSettings
// .accept_batch): bounds the time one burst of connects keeps a reactor from its connections,
// its timers and a stop.
inline constexpr unsigned kAcceptBatch = 64;

}  // namespace engine

#endif  // ENGINE_DEFAULTS_H_
