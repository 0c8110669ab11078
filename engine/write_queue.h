// File: engine/write_queue.h
// An fd's write queue: a chain of struct Packet through metadata.next, head first.
//
// Packet kinds: memory (buffer == internal_memory, filled by copies), external (a malloc'd
// buffer owned by the queue) and file (a FILE* streamed with sendfile; its progress lives in
// a FileSegment written over the packet's internal_memory).
// Ordering: bytes leave in queue order. metadata.can_interrupt marks a packet that starts a
// write and has not started sending: urgent chains are inserted before the first such
// packet that is not itself urgent, so they never split a write or a partly sent packet.
// Ownership: the queue owns every packet linked into it and frees them once written or when
// the queue is dropped. All-or-nothing: a failed append queues nothing.
// Threads: the fd's owner thread.
#ifndef ENGINE_WRITE_QUEUE_H_
#define ENGINE_WRITE_QUEUE_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "alloc/block_pool.h"
#include "engine/fd_table.h"
#include "engine/libsock.h"

namespace engine {

// Payload per packet when data is cut into records (transport layers, file chunks); the rest
// of the packet is headroom a layer may use for its framing.
inline constexpr std::size_t kPacketBytes = BUFFER_PACKET_SIZE;
inline constexpr std::size_t kRecordPayload = BUFFER_FILE_READ_SIZE;
inline constexpr std::size_t kRecordHeadroom = kPacketBytes - kRecordPayload;
static_assert(kRecordPayload > 0 && kRecordPayload < kPacketBytes,
              "BUFFER_FILE_READ_SIZE must leave headroom inside BUFFER_PACKET_SIZE");

// The pool packets for fd should come from: its reactor's, else the calling thread's
// reactor's, else the process-wide pool for threads without a reactor.
alloc::BlockPool& pool_for(const FdSlot* slot);
alloc::BlockPool& fallback_pool();

// A cleared packet (buffer = internal_memory), or nullptr with errno ENOMEM.
Packet* packet_new(alloc::BlockPool& pool);
// Frees a chain: fclose's files, frees external buffers, returns packets to their pools.
void packet_chain_free(Packet* chain);

// Appends a copy of data; small writes merge into the tail packet (with transport layers, up
// to one record of kRecordPayload bytes). `rest_of_write`: the data is the unsent rest of a
// write whose start already went to the kernel, so no urgent write may go before it.
// Returns 0 or -1 with errno ENOMEM (or ENOBUFS past the reactor's memory budget).
int queue_copy(FdSlot& slot, const void* data, std::size_t length, bool urgent,
               bool rest_of_write = false);
// Appends a malloc'd buffer without copying (copied into records when layers are set).
// Takes ownership of `buffer` even on error.
int queue_move(FdSlot& slot, void* buffer, std::size_t length, bool urgent);
// Appends `length` bytes (0 = to the end; all of them are sent or the connection fails with
// EIO) of a FILE* from its current offset. Takes ownership of `file` even on error (EINVAL if
// it is not a regular file, or if offset + length would pass what off_t holds). Returns the
// bytes the write will send (`length`, or what is left of the file; 0: none, and the file is
// closed already), or -1 with errno.
ssize_t queue_file(FdSlot& slot, FILE* file, std::size_t length, bool urgent);
// Whether a caller-built chain (sock_send_packet) can be sent as it says: every length 0 or
// more, memory behind it (at most kPacketBytes when that is the packet's internal memory), a
// FILE* behind a file packet. 0, or -1 with errno EINVAL. Any thread: it reads only the chain.
int check_chain(const Packet* chain);
// Links a caller-built chain (sock_send_packet), checked with check_chain() first. Each packet
// will be wrapped by the fd's layers when it is first sent. On error (-1 with errno) the
// caller keeps the chain.
int queue_chain(FdSlot& slot, Packet* chain);

// Queues bytes a layer produced (sock_tlc_write), to be wrapped by the layers below the first
// `skip_layers`, in the layer's wire order: after every packet the layer has wrapped and
// before the first it has not. Small records share a packet with the layer's record just
// before them. Returns 0, or -1 with errno (ENOMEM, ENOBUFS): the bytes before the failure
// stay queued.
int queue_layer_bytes(FdSlot& slot, const char* data, std::size_t length, unsigned skip_layers);

// kHeld: a layer holds back the packet now at the head of unsent data (a TLS handshake is
// not done); nothing waits for EPOLLOUT, the layer asks for the next flush (sock_tlc_write).
enum class SendResult { kDrained, kBlocked, kBudget, kHeld, kError };
// Sends the queue with sendmsg(MSG_NOSIGNAL)/sendfile until it is empty, the kernel says
// EAGAIN, `budget` bytes went out, or a layer holds a packet, wrapping each packet with the
// transport layers just before it is first sent. Adds the bytes written to *written. kError
// leaves errno in slot_error(slot) (EPROTO when a layer failed).
SendResult send_queue(int fd, FdSlot& slot, std::size_t budget, std::size_t* written);

}  // namespace engine

#endif  // ENGINE_WRITE_QUEUE_H_
