// File: engine/handle.h
// An fd number and the generation of the connection on it (FdSlot::generation), packed into
// one 64-bit word, the generation above the fd. The one codec for every place that must tell
// a connection from a later one on the same number: epoll event data, the reactor's work
// lists and timer entries (a leftover entry of a closed connection no longer matches its
// slot), posted calls, and the public handles of sock_fd2uuid(), which are the same word with
// the generation's top bit cleared, so that a handle is never negative (-1 stays the error).
// Threads: pure functions; any thread.
#ifndef ENGINE_HANDLE_H_
#define ENGINE_HANDLE_H_

#include <climits>
#include <cstdint>

namespace engine {

inline constexpr unsigned kGenerationShift = 32;
static_assert(sizeof(int) * CHAR_BIT <= kGenerationShift, "an fd number fits below the generation");

// The key of (fd, generation): epoll data, work lists, the timer wheel.
constexpr uint64_t fd_key(int fd, uint32_t generation) {
  return (uint64_t{generation} << kGenerationShift) | static_cast<uint32_t>(fd);
}
constexpr int key_fd(uint64_t key) { return static_cast<int>(static_cast<uint32_t>(key)); }
constexpr uint32_t key_generation(uint64_t key) {
  return static_cast<uint32_t>(key >> kGenerationShift);
}

// Handles (sock_fd2uuid): the key with 31 bits of generation. A connection's handle stops
// matching once the slot's generation moves on (every open and close moves it).
inline constexpr uint32_t kUuidGenerationMask = UINT32_MAX >> 1;
static_assert(sizeof(intptr_t) == sizeof(uint64_t), "a handle is a key in an intptr_t");

constexpr intptr_t make_uuid(int fd, uint32_t generation) {
  return static_cast<intptr_t>(fd_key(fd, generation & kUuidGenerationMask));
}
constexpr int uuid_fd(intptr_t uuid) { return key_fd(static_cast<uint64_t>(uuid)); }
// Whether `uuid` names the connection of this generation (never true for a negative uuid).
constexpr bool uuid_matches(intptr_t uuid, uint32_t generation) {
  return uuid >= 0 &&
         key_generation(static_cast<uint64_t>(uuid)) == (generation & kUuidGenerationMask);
}

static_assert(key_fd(fd_key(INT_MAX, UINT32_MAX)) == INT_MAX);
static_assert(key_generation(fd_key(INT_MAX, UINT32_MAX)) == UINT32_MAX);
static_assert(make_uuid(INT_MAX, UINT32_MAX) >= 0, "a handle is never negative");
static_assert(uuid_matches(make_uuid(7, 0x80000003u), 0x80000003u));
static_assert(!uuid_matches(make_uuid(7, 3), 5));

}  // namespace engine

#endif  // ENGINE_HANDLE_H_
