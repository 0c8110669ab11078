// File: tests/testing/metrics_text.h
// Reading one value back out of a Prometheus text exposition (engine/metrics.h), for tests
// that check the figures a scrape reports against the counters they expect.
#ifndef TESTS_TESTING_METRICS_TEXT_H_
#define TESTS_TESTING_METRICS_TEXT_H_

#include <string>

namespace testing_support {

// The value of the series `name` (with its labels exactly as written, e.g.
// `libsock_connections{shard="0"}`) in `text`, or -1 if the text has no such line.
inline double series_value(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const std::size_t at = ("\n" + text).find(key);
  return at == std::string::npos ? -1 : std::stod(text.substr(at + key.size() - 1));
}

}  // namespace testing_support

#endif  // TESTS_TESTING_METRICS_TEXT_H_
