#include "engine/fd_table.h"

#include <cerrno>
#include <cstdlib>
#include <new>

namespace engine {
namespace internal {
std::atomic<FdSlot*> g_pages[kPages];
}  // namespace internal

FdSlot* fd_slot_make(int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= kMaxFds) {
    errno = EBADF;
    return nullptr;
  }
  if (FdSlot* slot = fd_slot(fd)) return slot;
  const auto ufd = static_cast<std::size_t>(fd);
  // Aligned to the slots' line (malloc promises 16 bytes only); the loop below zeroes them.
  static_assert(kSlotsPerPage * sizeof(FdSlot) % alignof(FdSlot) == 0,
                "aligned_alloc needs a size that is a multiple of the alignment");
  auto* fresh =
      static_cast<FdSlot*>(std::aligned_alloc(alignof(FdSlot), kSlotsPerPage * sizeof(FdSlot)));
  if (!fresh) {
    errno = ENOMEM;
    return nullptr;
  }
  for (std::size_t i = 0; i < kSlotsPerPage; ++i) new (&fresh[i]) FdSlot{};
  FdSlot* expected = nullptr;
  // Release publishes the initialised page; a loser of the race frees its copy.
  if (!internal::g_pages[ufd / kSlotsPerPage].compare_exchange_strong(
          expected, fresh, std::memory_order_release, std::memory_order_acquire)) {
    std::free(fresh);
  }
  return fd_slot(fd);
}

SlotExtra* slot_extra_make(FdSlot& slot) {
  if (!slot.extra) {
    slot.extra = new (std::nothrow) SlotExtra;
    if (!slot.extra) errno = ENOMEM;
  }
  return slot.extra;
}

void slot_extra_trim(FdSlot& slot) {
  const SlotExtra* x = slot.extra;
  if (!x || x->tlc || x->leftover || x->input_ended || (slot.flags & kOwnIdle) ||
      x->deadline_tick || x->high_watermark || x->low_watermark ||
      x->linger != SlotExtra::Linger::kNo) {
    return;
  }
  delete x;
  slot.extra = nullptr;
}

}  // namespace engine
