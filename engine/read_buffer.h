// File: engine/read_buffer.h
// Plaintext a transport layer produced beyond what the caller of sock_read() asked for. It is
// allocated only while such bytes wait (idle connections hold none) and freed once drained.
// Threads: the fd's owner thread.
#ifndef ENGINE_READ_BUFFER_H_
#define ENGINE_READ_BUFFER_H_

#include <cstddef>

namespace engine {

struct ReadBuffer {
  std::size_t begin;
  std::size_t end;
  char* data() { return reinterpret_cast<char*>(this + 1); }
};

// A buffer holding a copy of [data, data + length), or nullptr with errno ENOMEM.
ReadBuffer* read_buffer_new(const char* data, std::size_t length);
// Moves up to `count` bytes to `out`; frees the buffer (and nulls `rb`) once it is empty.
std::size_t read_buffer_take(ReadBuffer*& rb, char* out, std::size_t count);
void read_buffer_free(ReadBuffer* rb);

}  // namespace engine

#endif  // ENGINE_READ_BUFFER_H_
