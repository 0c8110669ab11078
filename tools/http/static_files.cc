#include "tools/http/static_files.h"

#include <fcntl.h>
#include <strings.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace tools::http {
namespace {

int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

}  // namespace

std::unique_ptr<StaticFiles> StaticFiles::open(const char* dir) {
  char* real = realpath(dir, nullptr);
  if (!real) return nullptr;
  std::string path = real;
  std::free(real);
  const int fd = ::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  if (path.back() != '/') path += '/';
  return std::unique_ptr<StaticFiles>(new StaticFiles(fd, std::move(path)));
}

StaticFiles::~StaticFiles() { close(fd_); }

int StaticFiles::open_file(const std::string& rel, struct stat* st) const {
  const char* name = rel.c_str();
  while (*name == '/') ++name;  // "//x": still relative to the root
  if (!*name) return -1;
  // O_PATH first: it opens nothing but the name, so a FIFO, a device or a socket under the
  // root is looked at without being opened (opening a FIFO for reading blocks until a writer
  // comes, and that would freeze the whole shard). Only a regular file is then opened for
  // reading, through /proc/self/fd: the same inode, whatever replaced the name meanwhile.
  const int path_fd = openat(fd_, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (path_fd < 0) return -1;
  char link[32];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", path_fd);
  struct stat path_st;
  if (fstat(path_fd, &path_st) < 0 || !S_ISREG(path_st.st_mode)) {  // a symlink too (O_NOFOLLOW)
    close(path_fd);
    return -1;
  }
  // An intermediate symlink may lead out of the root: the path the kernel opened must lie
  // under the root's realpath.
  char real[4096];
  const ssize_t n = readlink(link, real, sizeof real);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof real ||
      std::string_view(real, static_cast<std::size_t>(n)).substr(0, path_.size()) != path_) {
    close(path_fd);
    return -1;
  }
  // O_NONBLOCK: while another process holds a write lease on the file, a blocking open waits
  // until the holder lets go or the kernel breaks the lease (/proc/sys/fs/lease-break-time,
  // 45 s by default), and the shard with it; this one fails with EWOULDBLOCK (none there, for
  // now). It changes nothing for reads or sendfile from a regular file.
  const int fd = ::open(link, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  close(path_fd);
  if (fd < 0) return -1;
  if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode) || st->st_ino != path_st.st_ino ||
      st->st_dev != path_st.st_dev) {
    close(fd);
    return -1;
  }
  return fd;
}

int root_relative(std::string_view path, std::string* rel) {
  if (path.empty() || path[0] != '/') return 400;
  rel->clear();
  for (std::size_t i = 1; i < path.size(); ++i) {
    char ch = path[i];
    if (ch == '%') {
      const int hi = i + 2 < path.size() ? hex_value(path[i + 1]) : -1;
      const int lo = hi >= 0 ? hex_value(path[i + 2]) : -1;
      if (lo < 0) return 400;
      ch = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (ch == '\0') return 400;
    rel->push_back(ch);
  }
  // Any ".." segment, wherever it is, is refused (also "\\.." for good measure: not a
  // separator on Linux, but no file needs it).
  for (std::size_t from = 0; from <= rel->size();) {
    std::size_t end = rel->find('/', from);
    if (end == std::string::npos) end = rel->size();
    if (std::string_view(*rel).substr(from, end - from) == "..") return 404;
    from = end + 1;
  }
  return 0;
}

std::string_view content_type(std::string_view name) {
  const std::size_t slash = name.rfind('/');
  const std::size_t dot = name.rfind('.');
  if (dot == std::string_view::npos || (slash != std::string_view::npos && dot < slash)) {
    return "application/octet-stream";
  }
  const std::string_view ext = name.substr(dot + 1);
  static constexpr std::pair<std::string_view, std::string_view> kTypes[] = {
      {"html", "text/html; charset=utf-8"},
      {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},
      {"js", "text/javascript; charset=utf-8"},
      {"json", "application/json"},
      {"txt", "text/plain; charset=utf-8"},
      {"png", "image/png"},
      {"jpg", "image/jpeg"},
      {"jpeg", "image/jpeg"},
      {"gif", "image/gif"},
      {"svg", "image/svg+xml"},
      {"ico", "image/x-icon"},
      {"wasm", "application/wasm"},
  };
  for (const auto& [e, type] : kTypes) {
    if (ext.size() == e.size() && strncasecmp(ext.data(), e.data(), e.size()) == 0) return type;
  }
  return "application/octet-stream";
}

}  // namespace tools::http
