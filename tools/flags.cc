#include "tools/flags.h"

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string_view>

namespace tools {
namespace {

// More shards than this is a typo, not a machine.
constexpr long kMaxThreads = 1024;

// An idle timeout longer than a day is a typo too (the engine would take up to UINT_MAX - 1).
constexpr unsigned long kMaxIdleTimeoutMs = 24ul * 3600 * 1000;
static_assert(kMaxIdleTimeoutMs < SOCK_NO_TIMEOUT);

// Atomic: the handler may run on any thread, including a shard's, and reads it once set.
std::atomic<SockServer*> g_server{nullptr};

// sock_server_request_stop() is async-signal-safe: one write to an eventfd.
void on_signal(int) { sock_server_request_stop(g_server.load()); }

void usage(std::FILE* out, const ToolInfo& info) {
  std::fprintf(out,
               "usage: %s [--port P] [--threads N] [--accept-mode thread|reuseport]\n"
               "         [--placement round-robin|least-loaded] [--pin] [--idle-timeout-ms MS]\n"
               "%s\n"
               "  --port P         TCP port (default %s; 0 picks a free one, printed at start)\n"
               "  --threads N      shards: threads with an epoll set each (default: one per CPU)\n"
               "  --accept-mode M  thread: one acceptor thread hands connections to the shards\n"
               "                   (default); reuseport: one SO_REUSEPORT listener per shard\n"
               "  --placement P    the shard the acceptor picks: round-robin (default) or\n"
               "                   least-loaded (fewest connections, then fewest queued bytes)\n"
               "  --pin            pin shard i to CPU i\n"
               "  --idle-timeout-ms MS\n"
               "                   close a connection after MS ms with nothing read or sent\n"
               "                   (default 30000; 0: never)\n"
               "%s"
               "  --help           print this help\n"
               "SIGINT (Ctrl-C) or SIGTERM stops it once queued output is sent; a second one at "
               "once.\n",
               info.name, info.summary, info.default_port, info.extra_usage ? info.extra_usage : "");
}

// A whole number in [1, kMaxThreads].
bool parse_threads(const char* text, int* out) {
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || n < 1 || n > kMaxThreads) return false;
  *out = static_cast<int>(n);
  return true;
}

// A whole number of ms in [0, kMaxIdleTimeoutMs]; 0 turns the timeout off.
bool parse_idle_timeout(const char* text, unsigned* out) {
  if (*text < '0' || *text > '9') return false;  // strtoul would take a sign or spaces
  char* end = nullptr;
  errno = 0;
  const unsigned long ms = std::strtoul(text, &end, 10);
  if (errno != 0 || *end != '\0' || ms > kMaxIdleTimeoutMs) return false;
  *out = ms == 0 ? SOCK_NO_TIMEOUT : static_cast<unsigned>(ms);
  return true;
}

// `names` lists the choices in the order of their enum values.
bool parse_choice(const char* text, std::initializer_list<const char*> names, int* out) {
  int value = 0;
  for (const char* name : names) {
    if (std::strcmp(text, name) == 0) {
      *out = value;
      return true;
    }
    ++value;
  }
  return false;
}
static_assert(SOCK_ACCEPT_THREAD == 0 && SOCK_ACCEPT_REUSEPORT == 1);
static_assert(SOCK_PLACE_ROUND_ROBIN == 0 && SOCK_PLACE_LEAST_LOADED == 1);

// -1: go on and run; otherwise the exit status.
int parse(int argc, char** argv, const ToolInfo& info, SockServerSettings* settings) {
  settings->port = info.default_port;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help") {
      usage(stdout, info);
      return 0;
    }
    if (flag == "--pin") {
      settings->pin_cpus = 1;
      continue;
    }
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = value != nullptr;
    if (flag == "--port") {
      if (ok) settings->port = value;
    } else if (flag == "--threads") {
      ok = ok && parse_threads(value, &settings->threads);
    } else if (flag == "--accept-mode") {
      ok = ok && parse_choice(value, {"thread", "reuseport"}, &settings->accept_mode);
    } else if (flag == "--placement") {
      ok = ok && parse_choice(value, {"round-robin", "least-loaded"}, &settings->placement);
    } else if (flag == "--idle-timeout-ms") {
      ok = ok && parse_idle_timeout(value, &settings->idle_timeout_ms);
    } else {
      std::fprintf(stderr, "%s: unknown option '%s'\n", info.name, argv[i]);
      usage(stderr, info);
      return 2;
    }
    if (!ok) {
      if (value) {
        std::fprintf(stderr, "%s: bad value for %s: '%s'\n", info.name, argv[i], value);
      } else {
        std::fprintf(stderr, "%s: %s needs a value\n", info.name, argv[i]);
      }
      usage(stderr, info);
      return 2;
    }
    ++i;  // the value
  }
  return -1;
}

}  // namespace

int run_server(int argc, char** argv, const ToolInfo& info, SockServerSettings settings) {
  if (const int status = parse(argc, argv, info, &settings); status >= 0) return status;
  SockServer* server = sock_server_start_fn(settings);
  if (!server) {
    std::fprintf(stderr, "%s: cannot start: %s\n", info.name, std::strerror(errno));
    return 1;
  }
  g_server.store(server);
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C ends the process at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::printf(info.listening, sock_server_port(server));
  std::printf("\n");
  std::fflush(stdout);

  sock_server_wait(server);
  sock_server_stop(server);  // cannot fail for a started server
  return 0;
}

}  // namespace tools
