// One producer thread hands kItems RemoteCalls to one consumer thread: a reactor's inbox
// against the textbook locked queue, in the same binary.
//
//   BM_LockfreeInboxHandoff         engine::Inbox, coalesced eventfd wakeup: the consumer
//                                   loops {may_sleep() ? poll(eventfd) : drain}, the producer
//                                   writes the eventfd only when the consumer announced a sleep.
//   BM_MutexDequeNotifyWhenWaiting  std::mutex + std::deque + std::condition_variable; the
//                                   producer notifies only when the consumer waits (a flag under
//                                   the mutex): the fair baseline, coalesced like the inbox.
//   BM_MutexDequeNotifyEveryPush    the same queue, notify_one() after every push (the naive
//                                   version).
// Both locked consumers take the whole deque per lock (swap), as muduo's queueInLoop does, so
// the baseline pays one lock per batch on the consumer side, not one per item.
//
// Each iteration starts a consumer thread, posts kItems from the benchmark thread and joins the
// consumer; the time is wall time (UseRealTime) so it covers both threads. Items processed =
// calls handed over, so items_per_second is the handoff rate. wakeups_per_item counts eventfd
// writes (inbox) or notify_one() calls (locked queues).
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "benchmark/benchmark.h"
#include "engine/remote.h"
#include "engine/inbox.h"

namespace {

using engine::RemoteCall;

// Enough items that starting and joining the consumer thread (tens of microseconds) is noise.
constexpr std::size_t kItems = 1'000'000;

RemoteCall item(std::size_t i) {
  RemoteCall call{};
  call.kind = RemoteCall::Kind::kRun;
  call.length = i;
  return call;
}

void report(benchmark::State& state, uint64_t wakeups) {
  const auto items = static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kItems);
  state.SetItemsProcessed(items);
  state.counters["wakeups_per_item"] = static_cast<double>(wakeups) / static_cast<double>(items);
}

void write_eventfd(void* fd) {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t r = write(*static_cast<int*>(fd), &one, sizeof one);
}

void BM_LockfreeInboxHandoff(benchmark::State& state) {
  int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) std::abort();
  uint64_t wakeups = 0;
  for (auto _ : state) {
    engine::Inbox inbox(&write_eventfd, &wake_fd);
    std::thread consumer([&] {
      std::size_t seen = 0;
      uint64_t sum = 0;
      auto run = [&](const RemoteCall& c) { sum += c.length; };
      while (seen < kItems) {
        if (inbox.may_sleep()) {
          pollfd pfd{.fd = wake_fd, .events = POLLIN, .revents = 0};
          poll(&pfd, 1, -1);
          uint64_t count;
          [[maybe_unused]] const ssize_t r = read(wake_fd, &count, sizeof count);
        }
        seen += inbox.drain_with(run);
      }
      benchmark::DoNotOptimize(sum);
    });
    for (std::size_t i = 0; i < kItems; ++i) {
      if (!inbox.post(item(i))) std::abort();
    }
    consumer.join();
    wakeups += inbox.counters().wakeups;
  }
  close(wake_fd);
  report(state, wakeups);
}

// The locked queue; `notify_every_push` picks the producer's policy.
void locked_handoff(benchmark::State& state, bool notify_every_push) {
  uint64_t wakeups = 0;
  for (auto _ : state) {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<RemoteCall> queue;  // guarded by mu
    bool waiting = false;          // guarded by mu: the consumer is (about to be) in cv.wait
    std::thread consumer([&] {
      std::deque<RemoteCall> batch;
      std::size_t seen = 0;
      uint64_t sum = 0;
      while (seen < kItems) {
        {
          std::unique_lock lock(mu);
          while (queue.empty()) {
            waiting = true;
            cv.wait(lock);
            waiting = false;
          }
          batch.swap(queue);
        }
        for (const RemoteCall& c : batch) sum += c.length;
        seen += batch.size();
        batch.clear();
      }
      benchmark::DoNotOptimize(sum);
    });
    for (std::size_t i = 0; i < kItems; ++i) {
      bool notify;
      {
        std::lock_guard lock(mu);
        queue.push_back(item(i));
        notify = notify_every_push || waiting;
        // One notify per wait: later pushes before the consumer runs need none.
        waiting = false;
      }
      if (notify) {
        cv.notify_one();
        ++wakeups;
      }
    }
    consumer.join();
  }
  report(state, wakeups);
}

void BM_MutexDequeNotifyWhenWaiting(benchmark::State& state) { locked_handoff(state, false); }
void BM_MutexDequeNotifyEveryPush(benchmark::State& state) { locked_handoff(state, true); }

BENCHMARK(BM_LockfreeInboxHandoff)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MutexDequeNotifyWhenWaiting)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MutexDequeNotifyEveryPush)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
