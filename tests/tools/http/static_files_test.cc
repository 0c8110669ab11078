// tools/http/static_files.cc: open_file() against a file another process holds a lease on.
#include "tools/http/static_files.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>

#include "tests/tools/http/one_file_root.h"

namespace {

namespace http = tools::http;

// A write lease (fcntl F_SETLEASE) held by another process makes an open for reading wait
// until the holder lets go or the kernel breaks the lease (/proc/sys/fs/lease-break-time,
// 45 s by default), and a shard's thread with it. The holder here ignores the break's SIGIO
// and holds on until the test lets it go; open_file() runs on a thread of its own, so that a
// blocked one fails the test at the deadline instead of hanging it.
TEST(StaticFilesTest, FileUnderAWriteLeaseIsNoneThereInsteadOfWaitedFor) {
  const testing_support::OneFileRoot root = testing_support::one_file_root("static_files");
  ASSERT_NE(root.files, nullptr);
  const std::string& path = root.path;
  const std::unique_ptr<http::StaticFiles>& files = root.files;

  int ready[2], release[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(release), 0);
  const pid_t holder = fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    close(ready[0]);
    close(release[1]);
    signal(SIGIO, SIG_IGN);
    // A write lease needs no other open of the file anywhere: the holder's own is read-only.
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    const int error = fd < 0 || fcntl(fd, F_SETLEASE, F_WRLCK) < 0 ? errno : 0;
    if (write(ready[1], &error, sizeof error) != sizeof error) _exit(1);
    char byte;
    while (read(release[0], &byte, 1) < 0 && errno == EINTR) {
    }
    _exit(0);  // EOF: the test is done with the lease
  }
  close(ready[1]);
  close(release[0]);
  int error = -1;
  const bool reported = read(ready[0], &error, sizeof error) == sizeof error;
  close(ready[0]);
  if (!reported || error != 0) {
    close(release[1]);
    waitpid(holder, nullptr, 0);
    GTEST_SKIP() << "no write lease could be taken here: "
                 << (reported ? std::strerror(error) : "the holder died");
  }

  std::future<int> opened = std::async(std::launch::async, [&files] {
    struct stat st;
    return files->open_file("a.txt", &st);
  });
  const bool returned = opened.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  close(release[1]);  // the lease goes with the holder, which unblocks a waiting open
  int status = 0;
  ASSERT_EQ(waitpid(holder, &status, 0), holder);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const int fd = opened.get();
  EXPECT_TRUE(returned) << "open_file waited for the lease to be broken";
  EXPECT_EQ(fd, -1);
  if (fd >= 0) close(fd);

  // Without the lease the file is there again.
  struct stat st = {};
  const int again = files->open_file("a.txt", &st);
  EXPECT_GE(again, 0);
  EXPECT_EQ(st.st_size, 3);
  if (again >= 0) close(again);
}

}  // namespace
