// File: engine/tsan_suppressions.cc
// What ThreadSanitizer is told to ignore, for every binary that links the engine: the TSan
// runtime asks each binary for __tsan_default_suppressions() at start-up. Built with
// linkstatic and alwayslink (engine/BUILD), so that the object lands in each executable even
// in Bazel's dynamic test links; from a shared library it would lose to the runtime's own weak
// definition. The entries: Boost.Lockfree's, which only the inbox (inbox.h) uses, and jemalloc's.
#if defined(__SANITIZE_THREAD__)
// Boost.Lockfree's node freelist reads and writes the link of a node that another thread may be
// reusing at the same moment, with plain accesses: the tag in the link makes the following CAS
// fail, so the stale value is never used, but TSan sees a race (boostorg/lockfree issue #78).
// The queue's own node links get the same treatment: a producer loads the tail node's link
// while that node's memory, recycled through the freelist, is being rewritten by another
// thread (seen here as an atomic load racing a plain write in do_push). race_top matches only
// the innermost frame, so these hide exactly those link accesses and nothing that touches a
// call's payload or the inbox's own atomics (inbox.cc).
// jemalloc (Debian's, not built with TSan) takes its own mutexes, with pthread calls TSan
// intercepts, around metadata it carves from memory it mmapped on another thread under
// another of its locks: with jemalloc's accesses invisible, TSan sees a trylock of a word
// that an "mmap" wrote (seen once the profiler read arena statistics on one thread while a
// shard allocated a chunk on another). The entry hides races with a frame in jemalloc's
// library; the program's own accesses to memory jemalloc hands out are still checked.
// (called_from_lib would hide them too, but it also drops the locks jemalloc takes before a
// fork, and TSan then reports their unlock after it.)
extern "C" const char* __tsan_default_suppressions() {
  return "race_top:boost::lockfree::detail::tagged_ptr<boost::lockfree::detail::freelist_stack<\n"
         "race_top:std::atomic<boost::lockfree::detail::tagged_ptr<boost::lockfree::queue<\n"
         "race:libjemalloc.so\n";
}
#endif
