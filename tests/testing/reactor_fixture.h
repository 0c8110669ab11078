// File: tests/testing/reactor_fixture.h
// GoogleTest fixtures for tests of the C API, all driven on the test thread: a struct Reactor
// whose callbacks reach virtual hooks, a loopback server on it, and a server with one client.
// Plain clients are read by the run_until() predicates, so both ends progress without threads.
#ifndef TESTS_TESTING_REACTOR_FIXTURE_H_
#define TESTS_TESTING_REACTOR_FIXTURE_H_

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/loopback.h"

namespace testing_support {

// Asserts that SIGPIPE keeps its default action and is not blocked on this thread: a write
// that raises it must kill the test binary, so nothing may hide such a regression. Call it
// under ASSERT_NO_FATAL_FAILURE.
void assert_sigpipe_default();

// r_, stopped by TearDown (every attached fd closed, on_close each). Its C callbacks call the
// hooks below on the fixture of the test running now.
class ReactorFixture : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  virtual void on_data(struct Reactor*, int) {}
  virtual void on_ready(struct Reactor*, int) {}
  virtual void on_shutdown(struct Reactor*, int) {}
  virtual void on_close(struct Reactor*, int) {}

  // Stops r_ and runs it until its engine state is freed; a no-op if it has none.
  void stop();

  // Runs n more iterations after a condition held, so that a second (wrong) callback would
  // have had its chance.
  void run_iterations(int n);

  SockPoolStats pool_stats();

  // Runs r_ while the plain socket fd is read into *got, until *got holds `size` bytes.
  // Returns whether it does before the deadline (a close does not end the wait).
  bool read_at_least(int fd, std::string* got, std::size_t size);

  // Runs r_ while fd is read into *got, until the peer closed or *got holds `size` bytes.
  // Returns false if the deadline passed first.
  bool read_until_closed(int fd, std::string* got, std::size_t size = SIZE_MAX);

  // read_until_closed into a new string, which it returns (a failure if the deadline passed).
  std::string read_to_eof(int fd, std::size_t size = SIZE_MAX);

  struct Reactor r_ = {};

 private:
  static void data_cb(struct Reactor* r, int fd) { current_->on_data(r, fd); }
  static void ready_cb(struct Reactor* r, int fd) { current_->on_ready(r, fd); }
  static void shutdown_cb(struct Reactor* r, int fd) { current_->on_shutdown(r, fd); }
  static void close_cb(struct Reactor* r, int fd) { current_->on_close(r, fd); }

  static inline ReactorFixture* current_ = nullptr;
};

// A loopback listener attached to r_. on_data accepts every pending connection onto r_
// (accepted_, then on_accept) and hands data on any other fd to on_connection_data; on_close
// logs every closed fd in closed_.
class ServerFixture : public ReactorFixture {
 protected:
  void SetUp() override;

  void on_data(struct Reactor* r, int fd) override;
  void on_close(struct Reactor*, int fd) override { closed_.push_back(fd); }
  virtual void on_accept(int) {}
  // Reads and discards what arrived.
  virtual void on_connection_data(int fd);

  // Connects a plain client to the listener (its SO_RCVBUF shrunk to rcvbuf when > 0) and
  // runs r_ until the server side is accepted: *server_fd (-1 and a fatal failure if never).
  // Returns the client.
  int connect_and_accept(int* server_fd, int rcvbuf = 0);

  // Five iterations of up to 1 ms each, so that a second on_close (a bug) would have happened.
  void settle();

  Listener listener_;
  std::vector<int> accepted_;
  std::vector<int> closed_;
};

// A server with one plain client (client_, closed by TearDown unless it is -1 by then) and
// its server side (server_); server_closes_ counts the on_close calls for server_.
class OneClientFixture : public ServerFixture {
 protected:
  void TearDown() override;

  void on_close(struct Reactor* r, int fd) override;

  // Connects client_ and accepts server_. With buffer > 0 both the client's receive buffer and
  // the server's send buffer are shrunk to it, so that little is in flight in the kernel.
  void connect_client(int buffer = 0);

  // Closes client_ with a RST instead of a FIN.
  void reset_client();

  int client_ = -1;
  int server_ = -1;
  int server_closes_ = 0;
};

}  // namespace testing_support

#endif  // TESTS_TESTING_REACTOR_FIXTURE_H_
