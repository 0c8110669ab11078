// tools/http/http_date: IMF-fixdates written and read without glibc's time functions (which
// take its time-zone lock), checked against those functions as the oracle.
#include "tools/http/http_date.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <ctime>
#include <limits>
#include <string>

namespace {

using tools::http::format_http_date;
using tools::http::kHttpDateLength;
using tools::http::parse_http_date;

std::string libc_format(std::time_t t) {
  std::tm tm;
  gmtime_r(&t, &tm);
  char text[64];
  const std::size_t n = std::strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(text, n);
}

std::string format(std::time_t t) {
  char out[kHttpDateLength];
  if (!format_http_date(t, out)) return "(none)";
  return std::string(out, kHttpDateLength);
}

TEST(HttpDateTest, FormatsTheRfcExampleAndTheEpoch) {
  EXPECT_EQ(format(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

// Every day from 1900 to 2400 (leap years, century rules, before the epoch) at both ends of
// the day and a time that moves through it (before the epoch that offset is negative: a time
// in the day before, checked all the same).
TEST(HttpDateTest, FormatsAsGmtimeAndStrftimeDoOverFiveCenturies) {
  constexpr std::int64_t kDay = 86400;
  const std::int64_t first = -2208988800;  // 1900-01-01
  const std::int64_t last = 13569465600;   // 2400-01-01
  int checked = 0;
  for (std::int64_t day = first; day < last; day += kDay) {
    for (const std::int64_t offset : {std::int64_t{0}, (day / kDay * 7919) % kDay, kDay - 1}) {
      const auto t = static_cast<std::time_t>(day + offset);
      ASSERT_EQ(format(t), libc_format(t)) << "t = " << t;
      ++checked;
    }
  }
  EXPECT_GT(checked, 500000);
}

TEST(HttpDateTest, ParsesWhatItFormatsAndAgreesWithTimegm) {
  for (std::int64_t t = 0; t < 13569465600; t += 86400 * 37 + 3607) {
    const std::string text = format(static_cast<std::time_t>(t));
    ASSERT_EQ(parse_http_date(text), t) << text;
    std::tm tm = {};
    ASSERT_NE(strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm), nullptr);
    ASSERT_EQ(timegm(&tm), t) << text;
  }
  EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parse_http_date("Wed, 29 Feb 2000 23:59:59 GMT"), 951868799);
  // A leap second counts as the next second, as timegm counts it.
  EXPECT_EQ(parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT"), 1483228800);
}

TEST(HttpDateTest, RefusesWhatIsNotAnImfFixdate) {
  for (const char* bad : {
           "",
           "Sun, 06 Nov 1994 08:49:37 GMT ",   // one character too many
           "Sun, 06 Nov 1994 08:49:37 UTC",    // not GMT
           "Sunday, 06-Nov-94 08:49:37 GMT",   // RFC 850, obsolete
           "Sun Nov  6 08:49:37 1994     ",    // asctime, padded to the same length
           "Xyz, 06 Nov 1994 08:49:37 GMT",    // no such weekday
           "Sun, 06 Nox 1994 08:49:37 GMT",    // no such month
           "Sun, 6  Nov 1994 08:49:37 GMT",    // a day not two digits
           "Sun, 00 Nov 1994 08:49:37 GMT",    // day 0
           "Sun, 31 Nov 1994 08:49:37 GMT",    // November has 30 days
           "Tue, 29 Feb 1900 00:00:00 GMT",    // 1900 is not a leap year
           "Sun, 06 Nov 1994 24:00:00 GMT",    // hour 24
           "Sun, 06 Nov 1994 08:60:37 GMT",    // minute 60
           "Sun, 06 Nov 1994 08:49:61 GMT",    // second 61
           "Sun, 06 Nov 19x4 08:49:37 GMT",    // not a year
           "Sun; 06 Nov 1994 08:49:37 GMT",    // separators
           "Sun, 06 Nov 1994 08-49-37 GMT",
           "Wed, 31 Dec 1969 23:59:59 GMT",    // before the epoch: no modification time
       }) {
    EXPECT_EQ(parse_http_date(bad), -1) << '"' << bad << '"';
  }
}

TEST(HttpDateTest, RefusesToFormatATimeOutsideYearsZeroTo9999) {
  EXPECT_EQ(format(std::numeric_limits<std::time_t>::min()), "(none)");
  EXPECT_EQ(format(std::numeric_limits<std::time_t>::max()), "(none)");
  EXPECT_EQ(format(253402300799), "Fri, 31 Dec 9999 23:59:59 GMT");
  EXPECT_EQ(format(253402300800), "(none)");
  EXPECT_EQ(format(-62167219200), "Sat, 01 Jan 0000 00:00:00 GMT");
  EXPECT_EQ(format(-62167219201), "(none)");
}

}  // namespace
