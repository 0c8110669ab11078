// The timing wheel (engine/timer_wheel.cc): never early, at most a tick late, each entry once,
// dues beyond the horizon, bounded work after a long pause, re-arming from inside fire(), and
// next_timeout_ms() as an epoll_wait timeout.
//
// No clock and no sleeping: every test passes fake now_ms values. "Driven" loops behave as a
// reactor does: sleep for next_timeout_ms() (here: add it to now), then advance().
#include "engine/timer_wheel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

namespace engine {
namespace {

constexpr int64_t kTick = TimerWheel::kTickMs;

struct Fired {
  uint64_t key;
  int64_t due_ms;
  int64_t now_ms;  // the advance() that fired it
};

// Advances `wheel` to now_ms, appending what fires to `fired`.
void advance_to(TimerWheel& wheel, int64_t now_ms, std::vector<Fired>& fired) {
  wheel.advance(now_ms, [&](uint64_t key, int64_t due_ms) {
    fired.push_back(Fired{key, due_ms, now_ms});
  });
}

// The tick boundary at or after ms (ms >= 0): the latest a reactor driven by
// next_timeout_ms() may wake for an entry due at ms.
int64_t round_up_to_tick(int64_t ms) { return (ms + kTick - 1) / kTick * kTick; }

TEST(TimerWheel, NeverFiresEarlyAndFiresAtItsDue) {
  TimerWheel wheel(1'000);
  wheel.schedule(7, 1'234);
  std::vector<Fired> fired;
  for (int64_t now = 1'000; now < 1'234; ++now) advance_to(wheel, now, fired);
  EXPECT_TRUE(fired.empty());
  EXPECT_EQ(wheel.size(), 1u);

  advance_to(wheel, 1'234, fired);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].key, 7u);
  EXPECT_EQ(fired[0].due_ms, 1'234);
  EXPECT_EQ(wheel.size(), 0u);

  for (int64_t now = 1'234; now < 1'234 + 3 * TimerWheel::kHorizonMs; now += 17) {
    advance_to(wheel, now, fired);
  }
  EXPECT_EQ(fired.size(), 1u) << "an entry fires once";
}

TEST(TimerWheel, FiresWithinOneTickWhenDrivenByNextTimeout) {
  const int64_t start = 10'007;  // not on a tick boundary
  TimerWheel wheel(start);
  const std::vector<int64_t> offsets = {0,   1,   49,    50,     51,     99,     100,
                                        101, 777, 5'000, 51'199, 51'200, 51'201, 60'000};
  for (uint64_t i = 0; i < offsets.size(); ++i) wheel.schedule(i, start + offsets[i]);

  std::vector<Fired> fired;
  int64_t now = start;
  for (int wakeups = 0; wheel.size() > 0; ++wakeups) {
    ASSERT_LT(wakeups, 10'000) << "the driven loop stopped making progress";
    const int64_t timeout = wheel.next_timeout_ms(now);
    ASSERT_GE(timeout, 0);
    now += timeout;
    advance_to(wheel, now, fired);
  }
  ASSERT_EQ(fired.size(), offsets.size());
  std::set<uint64_t> keys;
  for (const Fired& f : fired) {
    EXPECT_GE(f.now_ms, f.due_ms) << "key " << f.key << " fired early";
    EXPECT_LE(f.now_ms - f.due_ms, kTick) << "key " << f.key << " fired too late";
    keys.insert(f.key);
  }
  EXPECT_EQ(keys.size(), offsets.size()) << "each entry fires exactly once";
}

TEST(TimerWheel, SameKeyArmedTwiceFiresTwice) {
  TimerWheel wheel(0);
  wheel.schedule(3, 100);
  wheel.schedule(3, 100);
  wheel.schedule(3, 5'000);
  std::vector<Fired> fired;
  advance_to(wheel, 100, fired);
  EXPECT_EQ(fired.size(), 2u);
  advance_to(wheel, 5'000, fired);
  EXPECT_EQ(fired.size(), 3u);
  EXPECT_EQ(wheel.size(), 0u);
}

// The reliability plan's "timer storm" (row 32): 10,000 connections time out within 10 s.
TEST(TimerWheel, TimerStormFiresEachOnceNeverEarlyAtMostATickLate) {
  constexpr int kEntries = 10'000;
  constexpr int64_t kSpreadMs = 10'000;
  const int64_t start = 1'000'003;
  std::mt19937_64 random(32);
  std::uniform_int_distribution<int64_t> due_offset(0, kSpreadMs);
  std::uniform_int_distribution<int64_t> step(1, kTick);

  TimerWheel wheel(start);
  std::vector<int64_t> due(kEntries);
  for (int i = 0; i < kEntries; ++i) {
    due[i] = start + due_offset(random);
    wheel.schedule(static_cast<uint64_t>(i), due[i]);
  }
  ASSERT_EQ(wheel.size(), static_cast<std::size_t>(kEntries));

  std::vector<int> times_fired(kEntries, 0);
  int early = 0;
  int late = 0;
  int64_t now = start;
  while (now <= start + kSpreadMs + kTick) {
    now += step(random);
    wheel.advance(now, [&](uint64_t key, int64_t due_ms) {
      ASSERT_LT(key, static_cast<uint64_t>(kEntries));
      EXPECT_EQ(due_ms, due[key]);
      ++times_fired[key];
      if (now < due_ms) ++early;
      if (now - due_ms > kTick) ++late;
    });
  }
  EXPECT_EQ(early, 0);
  EXPECT_EQ(late, 0);
  EXPECT_EQ(std::count(times_fired.begin(), times_fired.end(), 1), kEntries)
      << "every entry fires exactly once";
  EXPECT_EQ(wheel.size(), 0u);
  EXPECT_EQ(wheel.next_timeout_ms(now), -1);
}

TEST(TimerWheel, DuesBeyondTheHorizonFireOnTimeNotEarly) {
  const int64_t start = 123'456;
  const int64_t five_minutes = start + 5 * 60'000 + 13;
  const int64_t two_hours = start + 2 * 3'600'000 + 1;
  const int64_t just_past_horizon = start + TimerWheel::kHorizonMs + 1;
  TimerWheel wheel(start);
  wheel.schedule(1, five_minutes);
  wheel.schedule(2, two_hours);
  wheel.schedule(3, just_past_horizon);

  // A tick at a time: each fires in the advance() that reaches its due, no earlier.
  std::vector<Fired> fired;
  for (int64_t now = start; wheel.size() > 0; now += kTick) {
    advance_to(wheel, now, fired);
    ASSERT_LE(now, two_hours + kTick);
  }
  ASSERT_EQ(fired.size(), 3u);
  EXPECT_EQ(fired[0].key, 3u);
  EXPECT_EQ(fired[1].key, 1u);
  EXPECT_EQ(fired[2].key, 2u);
  for (const Fired& f : fired) {
    EXPECT_GE(f.now_ms, f.due_ms);
    EXPECT_LT(f.now_ms - f.due_ms, kTick);
  }
}

TEST(TimerWheel, FarDuesCostFewWakeupsWhenDrivenByNextTimeout) {
  const int64_t start = 0;
  const int64_t two_hours = 2 * 3'600'000;
  TimerWheel wheel(start);
  wheel.schedule(9, two_hours);

  std::vector<Fired> fired;
  int64_t now = start;
  int wakeups = 0;
  while (wheel.size() > 0) {
    const int64_t timeout = wheel.next_timeout_ms(now);
    ASSERT_GE(timeout, 0);
    ASSERT_LE(now + timeout, two_hours) << "slept past the due";
    now += timeout;
    advance_to(wheel, now, fired);
    ASSERT_LT(++wakeups, 1'000);
  }
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].now_ms, two_hours);
  // About two per revolution (at the bucket, then past it), not one per tick (144,000).
  EXPECT_LE(wakeups, 2 * (two_hours / TimerWheel::kHorizonMs + 2));
}

TEST(TimerWheel, LongJumpFiresEverythingDueAndLeavesTheRest) {
  const int64_t start = 5'000;
  const int64_t hour = 3'600'000;
  TimerWheel wheel(start);
  const std::vector<int64_t> due_by_key = {start + 1,
                                           start + 1'000,
                                           start + 60'000,
                                           start + hour,
                                           start + 10 * hour - 1,
                                           start + 10 * hour,
                                           start + 10 * hour + 1,
                                           start + 11 * hour};
  for (uint64_t key = 0; key < due_by_key.size(); ++key) wheel.schedule(key, due_by_key[key]);

  std::vector<Fired> fired;
  advance_to(wheel, start + 10 * hour, fired);
  std::set<uint64_t> keys;
  for (const Fired& f : fired) keys.insert(f.key);
  EXPECT_EQ(keys, (std::set<uint64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(fired.size(), 6u);
  EXPECT_EQ(wheel.size(), 2u);

  advance_to(wheel, start + 10 * hour + 1, fired);
  ASSERT_EQ(fired.size(), 7u);
  EXPECT_EQ(fired.back().key, 6u);
  advance_to(wheel, start + 11 * hour - 1, fired);
  EXPECT_EQ(fired.size(), 7u);
  advance_to(wheel, start + 11 * hour, fired);
  ASSERT_EQ(fired.size(), 8u);
  EXPECT_EQ(fired.back().key, 7u);
}

// A loop per tick over this jump (2 x 10^13 ticks) would never finish: the test's time limit
// is the bound on the work.
TEST(TimerWheel, JumpOfCenturiesIsBoundedWork) {
  const int64_t start = 0;
  const int64_t centuries = int64_t{1'000'000'000'000'000};  // ~31,700 years in ms
  TimerWheel wheel(start);
  for (uint64_t key = 0; key < 2'000; ++key) {
    wheel.schedule(key, start + static_cast<int64_t>(key) * 997);
  }
  wheel.schedule(99'999, centuries + 1);

  std::vector<Fired> fired;
  advance_to(wheel, centuries, fired);
  EXPECT_EQ(fired.size(), 2'000u);
  EXPECT_EQ(wheel.size(), 1u);
  advance_to(wheel, centuries + 1, fired);
  ASSERT_EQ(fired.size(), 2'001u);
  EXPECT_EQ(fired.back().key, 99'999u);
}

TEST(TimerWheel, RearmFromFireWaitsForItsNewDue) {
  TimerWheel wheel(0);
  wheel.schedule(1, 100);
  int fires = 0;
  int64_t last_due = 0;
  // The reactor's lazy reschedule: on firing, the connection's real deadline has moved on.
  const auto rearm = [&](uint64_t key, int64_t due_ms) {
    ++fires;
    last_due = due_ms;
    wheel.schedule(key, due_ms + 100);
  };
  wheel.advance(100, rearm);
  EXPECT_EQ(fires, 1) << "the re-armed entry is not due yet";
  EXPECT_EQ(wheel.size(), 1u);
  wheel.advance(199, rearm);
  EXPECT_EQ(fires, 1);
  wheel.advance(200, rearm);
  EXPECT_EQ(fires, 2);
  EXPECT_EQ(last_due, 200);
  // A jump over many re-arm periods fires once per advance(), not once per period: the
  // re-armed entry (due 400, already past) waits for the next advance().
  wheel.advance(100'000, rearm);
  EXPECT_EQ(fires, 3);
  EXPECT_EQ(last_due, 300);
  wheel.advance(100'000, rearm);  // the re-armed entry (due 400) is overdue now
  EXPECT_EQ(fires, 4);
  EXPECT_EQ(wheel.size(), 1u);
}

TEST(TimerWheel, RearmWithAPastDueFiresOnTheNextAdvance) {
  TimerWheel wheel(0);
  wheel.schedule(1, 10);
  int fires = 0;
  const auto rearm_now = [&](uint64_t key, int64_t) {
    ++fires;
    wheel.schedule(key, 0);  // already due
  };
  wheel.advance(10, rearm_now);
  EXPECT_EQ(fires, 1) << "a re-arm never fires in the same advance()";
  EXPECT_EQ(wheel.next_timeout_ms(10), 0);
  wheel.advance(10, rearm_now);
  EXPECT_EQ(fires, 2);
  wheel.advance(10'000, rearm_now);
  EXPECT_EQ(fires, 3);
  EXPECT_EQ(wheel.size(), 1u);
}

// Many re-arms from one bucket's fire() calls, aimed at that very bucket (one revolution on,
// and already due): nothing fires twice, nothing is lost, and the sanitizer build checks that
// no freed memory is touched.
TEST(TimerWheel, ManyRearmsIntoTheBucketBeingFiredAreSafe) {
  TimerWheel wheel(0);
  constexpr uint64_t kFirst = 100;
  for (uint64_t key = 0; key < kFirst; ++key) wheel.schedule(key, 60);
  std::vector<Fired> fired;
  wheel.advance(60, [&](uint64_t key, int64_t due_ms) {
    fired.push_back(Fired{key, due_ms, 60});
    if (key < kFirst) {
      // Same bucket (one revolution on) and the same tick (already due): 2 more per entry.
      wheel.schedule(key + 1'000, due_ms + TimerWheel::kHorizonMs);
      wheel.schedule(key + 2'000, due_ms);
    }
  });
  EXPECT_EQ(fired.size(), kFirst) << "re-armed entries wait for a later advance()";
  EXPECT_EQ(wheel.size(), 2 * kFirst);
  EXPECT_EQ(wheel.next_timeout_ms(60), 0) << "the re-arms due at 60 are overdue";

  advance_to(wheel, 60, fired);
  EXPECT_EQ(fired.size(), 2 * kFirst);
  advance_to(wheel, 60 + TimerWheel::kHorizonMs - 1, fired);
  EXPECT_EQ(fired.size(), 2 * kFirst);
  advance_to(wheel, 60 + TimerWheel::kHorizonMs, fired);
  ASSERT_EQ(fired.size(), 3 * kFirst);
  std::set<uint64_t> keys;
  for (const Fired& f : fired) keys.insert(f.key);
  EXPECT_EQ(keys.size(), 3 * kFirst) << "each entry fires exactly once";
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(TimerWheel, NextTimeoutIsMinusOneWhenEmpty) {
  TimerWheel wheel(42);
  EXPECT_EQ(wheel.next_timeout_ms(42), -1);
  wheel.schedule(1, 500);
  // 500 is the start of tick 10 (kTickMs 50): the wait ends exactly there.
  static_assert(TimerWheel::kTickMs == 50);
  EXPECT_EQ(wheel.next_timeout_ms(42), 500 - 42);
  std::vector<Fired> fired;
  advance_to(wheel, 500, fired);
  EXPECT_EQ(wheel.next_timeout_ms(500), -1);
}

TEST(TimerWheel, NextTimeoutEndsAtTheStartOfTheTickHoldingTheEarliestDue) {
  TimerWheel wheel(1'010);
  wheel.schedule(1, 1'530);  // tick 30 (1,500 to 1,549)
  wheel.schedule(2, 1'720);  // tick 34
  EXPECT_EQ(wheel.next_timeout_ms(1'010), 1'500 - 1'010);
  EXPECT_EQ(wheel.next_timeout_ms(1'499), 1);
  // Inside the tick that holds a due, the wait runs to the next boundary.
  std::vector<Fired> fired;
  advance_to(wheel, 1'510, fired);
  EXPECT_TRUE(fired.empty());
  EXPECT_EQ(wheel.next_timeout_ms(1'510), 1'550 - 1'510);
  advance_to(wheel, 1'530, fired);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(wheel.next_timeout_ms(1'530), 1'700 - 1'530);
}

TEST(TimerWheel, NextTimeoutIsZeroForADueInThePast) {
  TimerWheel wheel(1'000);
  wheel.schedule(1, 5'000);
  wheel.schedule(2, 999);
  EXPECT_EQ(wheel.next_timeout_ms(1'000), 0);
  std::vector<Fired> fired;
  advance_to(wheel, 1'000, fired);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].key, 2u);
  EXPECT_GT(wheel.next_timeout_ms(1'000), 0);
}

TEST(TimerWheel, NextTimeoutIsZeroNotNegativeWhenAsked) {
  TimerWheel wheel(0);
  wheel.schedule(1, 300);
  // Asked late, without advancing: the due has passed.
  EXPECT_EQ(wheel.next_timeout_ms(1'000), 0);
  EXPECT_EQ(wheel.next_timeout_ms(1'000'000), 0);
}

// Against the true earliest due, at random times with random arming and firing.
TEST(TimerWheel, NextTimeoutNeverPassesTheEarliestDueRoundedUpToTheTick) {
  std::mt19937_64 random(7);
  std::uniform_int_distribution<int64_t> due_offset(-200, 3 * TimerWheel::kHorizonMs);
  std::uniform_int_distribution<int64_t> step(0, 3 * kTick);
  std::uniform_int_distribution<int> arms(0, 3);

  const int64_t start = 777;
  TimerWheel wheel(start);
  std::multiset<int64_t> pending;
  int64_t now = start;
  uint64_t next_key = 0;
  for (int round = 0; round < 20'000; ++round) {
    for (int i = arms(random); i > 0 && pending.size() < 200; --i) {
      const int64_t due = now + due_offset(random);
      wheel.schedule(next_key++, due);
      pending.insert(due);
    }
    ASSERT_EQ(wheel.size(), pending.size());
    const int64_t timeout = wheel.next_timeout_ms(now);
    if (pending.empty()) {
      ASSERT_EQ(timeout, -1);
    } else {
      ASSERT_GE(timeout, 0);
      const int64_t earliest = *pending.begin();
      ASSERT_LE(now + timeout, std::max(now, round_up_to_tick(earliest)))
          << "round " << round << " now " << now << " earliest due " << earliest;
    }
    // Half the time wake exactly when told (as the reactor does), else at a random time.
    now += (round % 2 == 0 && timeout >= 0) ? timeout : step(random);
    wheel.advance(now, [&](uint64_t, int64_t due_ms) {
      ASSERT_LE(due_ms, now);
      const auto it = pending.find(due_ms);
      ASSERT_NE(it, pending.end());
      pending.erase(it);
    });
    ASSERT_TRUE(pending.empty() || *pending.begin() > now) << "something due did not fire";
  }
}

TEST(TimerWheel, TimeGoingBackIsHeldAtTheLatest) {
  TimerWheel wheel(10'000);
  wheel.schedule(1, 10'020);
  std::vector<Fired> fired;
  advance_to(wheel, 10'030, fired);
  ASSERT_EQ(fired.size(), 1u);
  wheel.schedule(2, 10'025);  // past by the wheel's clock
  advance_to(wheel, 9'000, fired);
  ASSERT_EQ(fired.size(), 2u) << "the wheel keeps its latest now";
  EXPECT_EQ(fired[1].key, 2u);
}

TEST(TimerWheel, NegativeTimesWork) {
  TimerWheel wheel(-10'001);
  wheel.schedule(1, -9'950);
  wheel.schedule(2, -1);
  wheel.schedule(3, 0);
  std::vector<Fired> fired;
  advance_to(wheel, -9'951, fired);
  EXPECT_TRUE(fired.empty());
  advance_to(wheel, -9'950, fired);
  EXPECT_EQ(fired.size(), 1u);
  advance_to(wheel, -1, fired);
  EXPECT_EQ(fired.size(), 2u);
  advance_to(wheel, 0, fired);
  EXPECT_EQ(fired.size(), 3u);
}

struct Thrown {};

TEST(TimerWheel, ThrowingFireLosesAndDuplicatesNothing) {
  TimerWheel wheel(0);
  for (uint64_t key = 0; key < 50; ++key) wheel.schedule(key, static_cast<int64_t>(key) * 20);
  std::multiset<uint64_t> fired_keys;
  bool thrown = false;
  EXPECT_THROW(wheel.advance(2'000,
                             [&](uint64_t key, int64_t) {
                               fired_keys.insert(key);
                               if (key == 20) {
                                 thrown = true;
                                 throw Thrown{};
                               }
                             }),
               Thrown);
  ASSERT_TRUE(thrown);
  EXPECT_EQ(wheel.size(), 50u - fired_keys.size());
  EXPECT_EQ(wheel.next_timeout_ms(2'000), 0) << "the rest are due: wake at once";
  wheel.advance(2'000, [&](uint64_t key, int64_t) { fired_keys.insert(key); });
  EXPECT_EQ(fired_keys.size(), 50u);
  EXPECT_EQ(std::set<uint64_t>(fired_keys.begin(), fired_keys.end()).size(), 50u);
  EXPECT_EQ(wheel.size(), 0u);

  // Within one tick, the rest of the bucket is still due: wake at once, not at the boundary.
  wheel.schedule(100, 2'001);
  wheel.schedule(101, 2'001);
  EXPECT_THROW(wheel.advance(2'001, [](uint64_t, int64_t) { throw Thrown{}; }), Thrown);
  EXPECT_EQ(wheel.size(), 1u);
  EXPECT_EQ(wheel.next_timeout_ms(2'001), 0);
  int fires = 0;
  wheel.advance(2'001, [&](uint64_t, int64_t) { ++fires; });
  EXPECT_EQ(fires, 1);
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(TimerWheel, CompactDropsWhatKeepRefusesAndTheRestStillFiresOnTime) {
  TimerWheel wheel(0);
  // 100,000 entries over 20 s (a connection-churn burst); only the multiples of 1000 stay.
  for (uint64_t key = 0; key < 100'000; ++key) {
    wheel.schedule(key, 30'000 + static_cast<int64_t>(key / 5));
  }
  const std::size_t dropped =
      wheel.compact([](uint64_t key, int64_t) { return key % 1000 == 0; });
  EXPECT_EQ(dropped, 99'900u);
  EXPECT_EQ(wheel.size(), 100u);
  EXPECT_EQ(wheel.next_timeout_ms(0), 30'000);
  std::vector<Fired> fired;
  for (int64_t now = 0; now <= 60'000; now += kTick) advance_to(wheel, now, fired);
  ASSERT_EQ(fired.size(), 100u);
  for (const Fired& f : fired) {
    EXPECT_EQ(f.key % 1000, 0u);
    EXPECT_EQ(f.due_ms, 30'000 + static_cast<int64_t>(f.key / 5));
    EXPECT_GE(f.now_ms, f.due_ms);
    EXPECT_LT(f.now_ms, f.due_ms + kTick);
  }
  EXPECT_EQ(wheel.size(), 0u);
  EXPECT_EQ(wheel.next_timeout_ms(60'000), -1);
  // Compacting an empty wheel is harmless.
  EXPECT_EQ(wheel.compact([](uint64_t, int64_t) { return false; }), 0u);
}

}  // namespace
}  // namespace engine
