// File: shards/start_thread.h
// Starting a shard's or the acceptor's thread without an exception: std::thread throws when
// pthread_create fails (EAGAIN: the thread limit, or no memory for a stack), and these threads
// start under the C API (sock_server_start), which no exception may leave.
// Threads: the controlling thread. Errors: false with errno (EAGAIN, ENOMEM); *thread is then
// unchanged.
#ifndef SHARDS_START_THREAD_H_
#define SHARDS_START_THREAD_H_

#include <cerrno>
#include <new>
#include <system_error>
#include <thread>
#include <utility>

namespace shards {

template <typename Fn>
bool start_thread(std::thread* thread, Fn&& fn) {
  try {
    *thread = std::thread(std::forward<Fn>(fn));
  } catch (const std::system_error& e) {
    errno = e.code().value();
    return false;
  } catch (const std::bad_alloc&) {  // the thread's shared state
    errno = ENOMEM;
    return false;
  }
  return true;
}

}  // namespace shards

#endif  // SHARDS_START_THREAD_H_
