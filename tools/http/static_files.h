// tools/http/static_files.h: where tools/http_server's --root files come from: a request path
// made relative to the root (percent-decoded, no ".." segment), opened under the root without
// escaping it, and the Content-Type of a file name. Sockets and responses are not its business
// (responder.h builds the responses; the server sends the file with sendfile).
//
// Threads: a StaticFiles is opened once (in main) and only read afterwards, so any number of
// threads may call open_file() on it at the same time; the free functions keep no state.
// Errors: -1 / false / a status, as each function says; nothing is logged.
#ifndef TOOLS_HTTP_STATIC_FILES_H_
#define TOOLS_HTTP_STATIC_FILES_H_

#include <sys/stat.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace tools::http {

// The directory served as "/". Owns an O_PATH fd of it (closed by the destructor).
class StaticFiles {
 public:
  // The root `dir`, or nullptr with errno set if it cannot be resolved or opened as a
  // directory.
  static std::unique_ptr<StaticFiles> open(const char* dir);

  ~StaticFiles();
  StaticFiles(const StaticFiles&) = delete;
  StaticFiles& operator=(const StaticFiles&) = delete;

  // Opens `rel` (from root_relative()) as a regular file: its fd, which the caller owns, with
  // *st filled; or -1 if there is none there: missing, not a regular file, a symlink as the
  // last component, or outside the root through an intermediate symlink; or, for now, while
  // another process holds a write lease on it. Never blocks: a FIFO, device or socket is
  // looked at through an O_PATH fd and never opened, a leased file is not waited for, and
  // nothing reads the file's contents here (open and fstat only).
  int open_file(const std::string& rel, struct stat* st) const;

 private:
  StaticFiles(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  int fd_;            // O_PATH | O_DIRECTORY, the base of every openat
  std::string path_;  // its realpath with a trailing '/': what every opened file must lie under
};

// The path of a request target's path part (the target up to '?' or '#') relative to the root:
// percent-decoded and without its leading '/' ("" for "/"). 0 with *rel set, or the status to
// answer: 400 for a bad escape, a NUL or a path that does not start with '/'; 404 for a ".."
// segment anywhere.
int root_relative(std::string_view path, std::string* rel);

// The Content-Type for a file name's extension (case-insensitive); application/octet-stream
// for an unknown or missing one.
std::string_view content_type(std::string_view name);

}  // namespace tools::http

#endif  // TOOLS_HTTP_STATIC_FILES_H_
