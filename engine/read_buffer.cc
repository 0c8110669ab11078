#include "engine/read_buffer.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace engine {

ReadBuffer* read_buffer_new(const char* data, std::size_t length) {
  auto* rb = static_cast<ReadBuffer*>(std::malloc(sizeof(ReadBuffer) + length));
  if (!rb) {
    errno = ENOMEM;
    return nullptr;
  }
  rb->begin = 0;
  rb->end = length;
  std::memcpy(rb->data(), data, length);
  return rb;
}

std::size_t read_buffer_take(ReadBuffer*& rb, char* out, std::size_t count) {
  const std::size_t n = std::min(count, rb->end - rb->begin);
  std::memcpy(out, rb->data() + rb->begin, n);
  rb->begin += n;
  if (rb->begin == rb->end) {
    std::free(rb);
    rb = nullptr;
  }
  return n;
}

void read_buffer_free(ReadBuffer* rb) { std::free(rb); }

}  // namespace engine
