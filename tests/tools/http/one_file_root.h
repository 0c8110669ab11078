// File: tests/tools/http/one_file_root.h
// A document root for the static-file tests: a fresh directory in TEST_TMPDIR holding one file,
// a.txt ("abc"), and the StaticFiles that serves it. The directory is left for Bazel to clear.
#ifndef TESTS_TOOLS_HTTP_ONE_FILE_ROOT_H_
#define TESTS_TOOLS_HTTP_ONE_FILE_ROOT_H_

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "tools/http/http_date.h"
#include "tools/http/static_files.h"

namespace testing_support {

struct OneFileRoot {
  std::string root;   // the directory
  std::string path;   // root + "/a.txt"
  std::unique_ptr<tools::http::StaticFiles> files;  // nullptr if anything failed
};

// `tag` names the directory (TEST_TMPDIR/tag_XXXXXX).
inline OneFileRoot one_file_root(const std::string& tag) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  OneFileRoot r;
  r.root = std::string(tmp ? tmp : "/tmp") + "/" + tag + "_XXXXXX";
  if (!mkdtemp(r.root.data())) return r;
  r.path = r.root + "/a.txt";
  FILE* file = std::fopen(r.path.c_str(), "w");
  if (!file) return r;
  std::fputs("abc", file);
  std::fclose(file);
  r.files = tools::http::StaticFiles::open(r.root.c_str());
  return r;
}

// The IMF-fixdate of the file's mtime, or "" if it cannot be had: an If-Modified-Since that
// makes a 304 (a later date might lie past the server's clock, which makes none).
inline std::string mtime_date(const std::string& path) {
  struct stat st;
  char date[tools::http::kHttpDateLength];
  if (stat(path.c_str(), &st) != 0 || !tools::http::format_http_date(st.st_mtime, date)) return "";
  return std::string(date, sizeof date);
}

}  // namespace testing_support

#endif  // TESTS_TOOLS_HTTP_ONE_FILE_ROOT_H_
