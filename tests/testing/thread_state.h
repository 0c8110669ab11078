// File: tests/testing/thread_state.h
// What another thread of this process is doing, as the kernel reports it: how a test knows
// that a thread is blocked in a system call (a reactor asleep in epoll_wait, a waiter in read)
// before it checks that something wakes it, without sleeping to let it get there.
#ifndef TESTS_TESTING_THREAD_STATE_H_
#define TESTS_TESTING_THREAD_STATE_H_

#include <sys/types.h>

#include <initializer_list>

namespace testing_support {

// The calling thread's kernel id (gettid).
pid_t current_tid();

// Whether thread `tid` of this process sleeps (state S) in one of the system calls `numbers`
// (SYS_*), as /proc/self/task/TID shows; where the kernel does not show the call, the state
// alone decides.
bool sleeps_in(pid_t tid, std::initializer_list<long> numbers);

}  // namespace testing_support

#endif  // TESTS_TESTING_THREAD_STATE_H_
