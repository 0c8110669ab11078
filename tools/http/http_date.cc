#include "tools/http/http_date.h"

#include <cstdint>
#include <cstring>

namespace tools::http {
namespace {

constexpr char kDays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr char kMonths[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
constexpr std::int64_t kSecondsPerDay = 86400;
// 1970-01-01 was a Thursday.
constexpr std::int64_t kEpochWeekday = 4;

// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12), and back: the era-based
// algorithms of H. Hinnant, "chrono-Compatible Low-Level Date Algorithms".
constexpr std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);                 // [0, 399]
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;  // [0, 365]
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           // [0, 146096]
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct Civil {
  std::int64_t year;
  unsigned month;
  unsigned day;
};

constexpr Civil civil_from_days(std::int64_t z) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2), m, d};
}

static_assert(days_from_civil(1970, 1, 1) == 0);
static_assert(days_from_civil(2000, 3, 1) == 11017);
static_assert(civil_from_days(11017).year == 2000 && civil_from_days(11017).month == 3 &&
              civil_from_days(11017).day == 1);

constexpr bool leap(std::int64_t y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }
constexpr unsigned days_in_month(std::int64_t y, unsigned m) {
  constexpr unsigned kLength[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : kLength[m - 1];
}

// The value of the `n` digits at s, or -1 if one is not a digit.
int digits(const char* s, int n) {
  int v = 0;
  for (int i = 0; i < n; ++i) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

void put2(char* at, unsigned v) {
  at[0] = static_cast<char>('0' + v / 10);
  at[1] = static_cast<char>('0' + v % 10);
}

// Index of the 3-letter name at s in names, or -1.
template <std::size_t N>
int name_index(const char* s, const char (&names)[N][4]) {
  for (std::size_t i = 0; i < N; ++i) {
    if (std::memcmp(s, names[i], 3) == 0) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

bool format_http_date(std::time_t t, char (&out)[kHttpDateLength]) {
  // Days and the second of the day, rounded toward the past for times before the epoch
  // (without multiplying back: days * 86400 overflows for the earliest time_t values).
  std::int64_t days = t / kSecondsPerDay;
  std::int64_t secs = t % kSecondsPerDay;
  if (secs < 0) {
    secs += kSecondsPerDay;
    --days;
  }
  const Civil c = civil_from_days(days);
  if (c.year < 0 || c.year > 9999) return false;
  const auto weekday = static_cast<unsigned>(((days + kEpochWeekday) % 7 + 7) % 7);
  char text[kHttpDateLength + 1];
  std::memcpy(text, "Www, DD Mmm YYYY HH:MM:SS GMT", kHttpDateLength);
  std::memcpy(text, kDays[weekday], 3);
  put2(text + 5, c.day);
  std::memcpy(text + 8, kMonths[c.month - 1], 3);
  put2(text + 12, static_cast<unsigned>(c.year / 100));
  put2(text + 14, static_cast<unsigned>(c.year % 100));
  put2(text + 17, static_cast<unsigned>(secs / 3600));
  put2(text + 20, static_cast<unsigned>(secs / 60 % 60));
  put2(text + 23, static_cast<unsigned>(secs % 60));
  std::memcpy(out, text, kHttpDateLength);
  return true;
}

std::time_t parse_http_date(std::string_view value) {
  if (value.size() != kHttpDateLength) return -1;
  const char* s = value.data();
  // The fixed characters: "Www, DD Mmm YYYY HH:MM:SS GMT".
  if (s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
      s[19] != ':' || s[22] != ':' || std::memcmp(s + 25, " GMT", 4) != 0) {
    return -1;
  }
  // The weekday is checked for a name only, as strptime did: a sender's wrong weekday costs
  // it a whole response instead of a 304, nothing worse.
  const int weekday = name_index(s, kDays);
  const int month = name_index(s + 8, kMonths);
  const int day = digits(s + 5, 2);
  const int year = digits(s + 12, 4);
  const int hour = digits(s + 17, 2);
  const int minute = digits(s + 20, 2);
  const int second = digits(s + 23, 2);
  if (weekday < 0 || month < 0 || day < 1 || year < 0 || hour < 0 || hour > 23 || minute < 0 ||
      minute > 59 || second < 0 || second > 60) {  // 60: a leap second, counted as the next
    return -1;
  }
  if (static_cast<unsigned>(day) > days_in_month(year, static_cast<unsigned>(month) + 1)) return -1;
  const std::int64_t days = days_from_civil(year, static_cast<unsigned>(month) + 1,
                                            static_cast<unsigned>(day));
  const std::int64_t t = days * kSecondsPerDay + hour * 3600 + minute * 60 + second;
  // A date before the epoch is not a modification time to compare with.
  return t < 0 ? -1 : static_cast<std::time_t>(t);
}

}  // namespace tools::http
