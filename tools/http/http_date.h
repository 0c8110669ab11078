// File: tools/http/http_date.h
// HTTP dates (IMF-fixdate, RFC 9110 5.6.7: "Sun, 06 Nov 1994 08:49:37 GMT"), written and read
// with calendar arithmetic alone. glibc's gmtime_r, strftime and timegm take its time-zone
// lock on every call, a lock every shard would share per static file served
// (docs/architecture.md, "Shared between shards").
// Threads: pure functions, any thread. Errors: parse_http_date returns -1 for anything that
// is not an IMF-fixdate of a real day (second 60 is taken at any minute, as the next second).
// Only IMF-fixdate is read: RFC 9110 also asks recipients to read the obsolete RFC 850 and
// asctime forms; for such an If-Modified-Since the server sends the whole file, not a 304.
#ifndef TOOLS_HTTP_HTTP_DATE_H_
#define TOOLS_HTTP_HTTP_DATE_H_

#include <cstddef>
#include <ctime>
#include <string_view>

namespace tools::http {

// Characters in an IMF-fixdate.
inline constexpr std::size_t kHttpDateLength = 29;

// Writes `t` (seconds since the epoch, UTC; years 0 to 9999) as an IMF-fixdate into out,
// without a terminating NUL. Returns false, writing nothing, for a time outside those years.
bool format_http_date(std::time_t t, char (&out)[kHttpDateLength]);

// The time an IMF-fixdate names, or -1 if value is not one, names a day the month does not
// have, or lies before the epoch. The weekday must be a weekday's name; it is not checked
// against the date.
std::time_t parse_http_date(std::string_view value);

}  // namespace tools::http

#endif  // TOOLS_HTTP_HTTP_DATE_H_
