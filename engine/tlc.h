// File: engine/tlc.h
// Transport Layer Callbacks (libsock.h): applying a chain of layers to data going out
// (wrap, head layer first) and coming in (unwrap, lowest layer first).
// Threads: the fd's owner thread. Errors: -1 with errno (EPROTO when a layer failed).
#ifndef ENGINE_TLC_H_
#define ENGINE_TLC_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "engine/fd_table.h"
#include "engine/libsock.h"

namespace engine {

// Layers a chain may have: unwrap walks it bottom-up through a fixed array, and a queued
// packet records in 3 bits of metadata.rsrv how many head layers skip it (write_queue.cc).
inline constexpr std::size_t kMaxLayers = 7;

// Wraps one packet with the layers from `layer` down. The packet must stay within its memory.
// Returns 0 (wrapped by all), 1 (a layer holds it: the *layers_done above that layer wrapped
// it, and the next try starts at the holder), or -1 (errno EPROTO: a layer failed or overran).
int tlc_wrap_from(int fd, sockTLC* layer, Packet* packet, unsigned* layers_done);

// sock_read() for an fd with layers: recv, unwrap bottom-up, hand out up to `count` bytes and
// keep the rest in slot.leftover. Returns > 0 bytes, 0 for "nothing yet", or -1: errno 0 at
// EOF, else the error. *drained: nothing waits until the socket's next readiness (it said
// EAGAIN or gave a short recv, and no layer filled the buffer or ended the stream in this
// call: a layer that did may hold more, without a new edge to announce it).
// A layer may change the chain from inside its unwrap (libsock.h): tlc_chain_changed() tells
// the read, which goes on with the new chain.
ssize_t tlc_read(int fd, FdSlot& slot, char* out, std::size_t count, bool* drained);

// What sock_tlc_add and sock_tlc_set did to fd's chain, in order of precedence: pushed layers
// on top (those below keep their places), or replaced it (the old layers are freed).
enum class ChainChange : uint8_t { kNone, kPushed, kReplaced };
// Tells the tlc_read()s of fd running on this thread (a layer's unwrap changed its own chain)
// what happened to the chain. sock_tlc_add and sock_tlc_set call it. Owner thread.
void tlc_chain_changed(int fd, ChainChange change);

// Runs on_clear for every layer of a detached chain.
void tlc_clear_chain(int fd, sockTLC* chain);

// Number of layers in a chain, or kMaxLayers + 1 if it is longer than allowed (or cyclic).
std::size_t tlc_depth(const sockTLC* chain);

}  // namespace engine

#endif  // ENGINE_TLC_H_
