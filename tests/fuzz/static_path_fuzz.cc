// libFuzzer target: the static-path resolver of tools/http (static_files.h). The input is a
// request path. root_relative() is checked against a reference decoder written here from its
// contract, and for a resolved path StaticFiles::open_file() runs against a root that holds
// every kind of name that must not be served: symlinks leading out of it (as the last
// component or in the middle), a symlink to a file inside it (refused as the last component),
// a FIFO and a socket (which must never block or be opened), directories. Asserted:
// - root_relative: status 0, 400 or 404 exactly as the contract says; a resolved path holds
//   no NUL and no ".." segment, and resolves again to itself once fully percent-encoded;
// - open_file: an fd only for a regular file whose real path lies under the root (one of
//   the files made inside it, never the one outside), and an fd for every such file reached
//   without a symlink as the last component; st filled for that file; never blocks (a FIFO
//   would hang the run, which libFuzzer reports as a timeout); no fd leaked;
// - content_type: any name gives a non-empty type.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "tests/fuzz/fuzz_support.h"
#include "tools/http/static_files.h"

namespace {

namespace http = tools::http;
using fuzz_support::write_file;

struct Root {
  std::string real;  // the root's realpath, without a trailing '/'
  std::unique_ptr<http::StaticFiles> files;
  std::set<std::pair<dev_t, ino_t>> inside;  // every regular file made under the root
  std::pair<dev_t, ino_t> outside{};         // the file beside the root that must stay unseen
};

std::pair<dev_t, ino_t> id_of(const std::string& path) {
  struct stat st;
  FUZZ_CHECK(lstat(path.c_str(), &st) == 0, path);
  return {st.st_dev, st.st_ino};
}

void make_socket_file(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  FUZZ_CHECK(path.size() < sizeof addr.sun_path, path);
  path.copy(addr.sun_path, path.size());
  FUZZ_CHECK(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, path);
  close(fd);  // the name stays: a socket file nobody listens on
}

// base/root is served; base/outside holds what no request may reach.
Root& root() {
  static Root* r = [] {
    auto* made = new Root;
    const std::string base = fuzz_support::make_scratch_dir("static_path_fuzz");
    const std::string dir = base + "/root";
    const std::string out = base + "/outside";
    FUZZ_CHECK(mkdir(dir.c_str(), 0755) == 0 && mkdir(out.c_str(), 0755) == 0, base);
    write_file(out + "/secret", "secret");
    made->outside = id_of(out + "/secret");
    FUZZ_CHECK(mkdir((dir + "/sub").c_str(), 0755) == 0, dir);
    FUZZ_CHECK(mkdir((dir + "/sub/deeper").c_str(), 0755) == 0, dir);
    for (const char* name : {"index.html", "a.txt", "A.TXT", "empty", "sub/b.css",
                             "sub/deeper/c.js", "...", ".hidden", "sp ace", "per%cent", "q?mark"}) {
      write_file(dir + "/" + name, name);
      made->inside.insert(id_of(dir + "/" + name));
    }
    FUZZ_CHECK(mkfifo((dir + "/fifo").c_str(), 0644) == 0, dir);
    make_socket_file(dir + "/sock");
    // Symlinks: inside to inside (file and directory), inside to outside (file, directory),
    // and one that climbs out with "..".
    FUZZ_CHECK(symlink("a.txt", (dir + "/link-in").c_str()) == 0, dir);
    FUZZ_CHECK(symlink("sub", (dir + "/dir-in").c_str()) == 0, dir);
    FUZZ_CHECK(symlink((out + "/secret").c_str(), (dir + "/link-out").c_str()) == 0, dir);
    FUZZ_CHECK(symlink(out.c_str(), (dir + "/dir-out").c_str()) == 0, dir);
    FUZZ_CHECK(symlink("../../outside", (dir + "/sub/climb").c_str()) == 0, dir);
    made->files = http::StaticFiles::open(dir.c_str());
    FUZZ_CHECK(made->files != nullptr, dir);
    char* real = realpath(dir.c_str(), nullptr);
    FUZZ_CHECK(real != nullptr, dir);
    made->real = real;
    std::free(real);
    return made;
  }();
  return *r;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// root_relative() as static_files.h states it, written independently: the target up to '?'
// or '#' is the caller's business, so the whole input is the path here.
int reference_relative(std::string_view path, std::string* rel) {
  if (path.empty() || path[0] != '/') return 400;
  rel->clear();
  for (std::size_t i = 1; i < path.size(); ++i) {
    if (path[i] != '%') {
      rel->push_back(path[i]);
      continue;
    }
    if (path.size() - i < 3 || hex_digit(path[i + 1]) < 0 || hex_digit(path[i + 2]) < 0) return 400;
    rel->push_back(static_cast<char>(hex_digit(path[i + 1]) * 16 + hex_digit(path[i + 2])));
    i += 2;
  }
  if (rel->find('\0') != std::string::npos) return 400;
  std::string_view rest = *rel;
  for (;;) {
    const std::size_t slash = rest.find('/');
    if (rest.substr(0, slash) == "..") return 404;
    if (slash == std::string_view::npos) return 0;
    rest.remove_prefix(slash + 1);
  }
}

std::string percent_encode_all(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out = "/";
  for (const char c : bytes) {
    const auto u = static_cast<unsigned char>(c);
    out += '%';
    out += kHex[u >> 4];
    out += kHex[u & 15];
  }
  return out;
}

// Whether open_file(rel) must give an fd: the name, relative to the root, is a regular file
// (not a symlink) whose real path lies under the root's. Intermediate symlinks may be
// followed; a name too long or through a non-directory simply fails both ways.
bool should_open(const Root& r, const std::string& rel) {
  std::string_view name = rel;
  while (!name.empty() && name.front() == '/') name.remove_prefix(1);
  if (name.empty()) return false;
  const std::string path = r.real + "/" + std::string(name);
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) return false;
  return std::string_view(real).substr(0, r.real.size() + 1) == r.real + "/";
}

void check_open(const Root& r, const std::string& rel) {
  struct stat st;
  const int fd = r.files->open_file(rel, &st);
  const bool expected = should_open(r, rel);
  FUZZ_CHECK((fd >= 0) == expected, "open_file(\"" + rel + "\") = " + std::to_string(fd));
  if (fd < 0) return;
  FUZZ_CHECK(S_ISREG(st.st_mode), rel);
  struct stat fst;
  FUZZ_CHECK(fstat(fd, &fst) == 0 && fst.st_ino == st.st_ino && fst.st_dev == st.st_dev, rel);
  const std::pair<dev_t, ino_t> id{st.st_dev, st.st_ino};
  FUZZ_CHECK(id != r.outside, "served the file outside the root: " + rel);
  FUZZ_CHECK(r.inside.count(id) == 1, "served a file not made under the root: " + rel);
  char link[32], real[PATH_MAX];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, real, sizeof real - 1);
  FUZZ_CHECK(n > 0, rel);
  FUZZ_CHECK(std::string_view(real, static_cast<std::size_t>(n)).substr(0, r.real.size() + 1) ==
                 r.real + "/",
             rel);
  close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const Root& r = root();
  const int free_fd = fuzz_support::lowest_free_fd();
  const std::string_view path(reinterpret_cast<const char*>(data), size);

  std::string rel, expected_rel;
  const int status = http::root_relative(path, &rel);
  const int expected = reference_relative(path, &expected_rel);
  FUZZ_CHECK(status == expected, "root_relative = " + std::to_string(status) +
                                     ", contract: " + std::to_string(expected));
  FUZZ_CHECK(!http::content_type(path).empty(), "empty content type");
  if (status != 0) return 0;
  FUZZ_CHECK(rel == expected_rel, "decoded \"" + rel + "\", contract \"" + expected_rel + "\"");
  // Redundant with the reference, but the two properties the root's safety rests on:
  FUZZ_CHECK(rel.find('\0') == std::string::npos, rel);
  FUZZ_CHECK(rel != ".." && rel.rfind("../", 0) != 0 && rel.find("/../") == std::string::npos &&
                 (rel.size() < 3 || rel.compare(rel.size() - 3, 3, "/..") != 0),
             rel);
  std::string again;
  FUZZ_CHECK(http::root_relative(percent_encode_all(rel), &again) == 0 && again == rel, rel);

  check_open(r, rel);
  FUZZ_CHECK(fuzz_support::lowest_free_fd() == free_fd, "fd leaked for " + rel);
  return 0;
}
