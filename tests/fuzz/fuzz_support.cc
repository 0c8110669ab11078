#include "tests/fuzz/fuzz_support.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace fuzz_support {
namespace {

std::vector<std::string>& scratch_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return remove(path); }

void remove_scratch_dirs() {
  for (const std::string& dir : scratch_dirs()) {
    nftw(dir.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
}

}  // namespace

void fail(const char* file, int line, const char* what, const std::string& detail) {
  std::fprintf(stderr, "%s:%d: check failed: %s (%s)\n", file, line, what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

int lowest_free_fd() {
  const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  FUZZ_CHECK(fd >= 0, "open /dev/null");
  close(fd);
  return fd;
}

std::string make_scratch_dir(std::string_view name) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/";
  pattern.append(name).append("-XXXXXX");
  FUZZ_CHECK(mkdtemp(pattern.data()) != nullptr, pattern);
  if (scratch_dirs().empty()) std::atexit(remove_scratch_dirs);
  scratch_dirs().push_back(pattern);
  return pattern;
}

void write_file(const std::string& path, std::string_view bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr, path);
  FUZZ_CHECK(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size(), path);
  FUZZ_CHECK(std::fclose(f) == 0, path);
}

}  // namespace fuzz_support
