#include "tools/server_main.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>

#include "engine/tls/sock_tls.h"

namespace tools {
namespace {

// More shards than this is a typo, not a machine.
constexpr std::uint64_t kMaxThreads = 1024;

// An idle timeout longer than a day is a typo too (the engine would take up to UINT_MAX - 1).
constexpr std::uint64_t kMaxIdleTimeoutMs = 24ul * 3600 * 1000;
static_assert(kMaxIdleTimeoutMs < SOCK_NO_TIMEOUT);
// An hour: the kernel turns the seconds into SYN-ACK retransmissions, and a longer wait only
// holds a silent client longer.
constexpr std::uint64_t kMaxDeferAcceptS = 3600;
// The field's range (SockServerSettings.max_connections, an unsigned).
constexpr std::uint64_t kMaxConnections = std::numeric_limits<unsigned>::max();

// Atomic: the handler may run on any thread, including a shard's, and reads it once set.
std::atomic<SockServer*> g_server{nullptr};

// --tls-cert/--tls-key: the configuration every shard's connections share, and the tool's
// own on_open, which runs once the layer is set. Set before the server starts.
SockTLS* g_tls = nullptr;
void (*g_tool_on_open)(struct Reactor*, int) = nullptr;

void on_open_tls(struct Reactor* r, int fd) {
  if (sock_tls_accept(fd, g_tls) < 0) {
    sock_force_close(r, fd);  // ENOMEM: no plaintext may be served on a TLS port
    return;
  }
  if (g_tool_on_open) g_tool_on_open(r, fd);
}

// The first SIGINT or SIGTERM asks for the stop; either one after it ends the process at once
// (their default action), while the stop drains too. sigaction() and
// sock_server_request_stop() (one write to an eventfd) are async-signal-safe.
void on_signal(int) {
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGINT, &dfl, nullptr);
  sigaction(SIGTERM, &dfl, nullptr);
  sock_server_request_stop(g_server.load());
}

// The --help layout: the usage line first (tests look for "usage: NAME"), then the summary,
// then every option in the order added, with no group headings or blank lines (readers of
// the help stop at the first blank line), then the footer.
class Help : public CLI::Formatter {
 public:
  Help() { column_width(26); }  // "  --header-timeout-ms MS" and its description on one line

  std::string make_help(const CLI::App* app, std::string name, CLI::AppFormatMode) const override {
    std::string text = "usage: " + name + " [OPTIONS]\n" + app->get_description() + "\n";
    for (const CLI::Option* option : app->get_options()) text += make_option(option, false);
    return text + make_footer(app);
  }
};

// Exactly one of the names, turned into its value. CheckedTransformer alone would also take
// the values themselves ("--accept-mode 1"). No description: CLI11 would append it to the
// option's type name ("M:{reuseport,thread} AND ...") in the help and in messages.
CLI::Validator one_of(const std::map<std::string, int>& names) {
  return (CLI::IsMember(names) & CLI::Transformer(names)).description("");
}

}  // namespace

CLI::Validator whole_number(std::uint64_t min, std::uint64_t max) {
  const CLI::Range range(min, max);
  return CLI::Validator(
      [range](std::string& text) {
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
          return "'" + text + "' is not a whole decimal number";
        }
        text.erase(0, std::min(text.find_first_not_of('0'), text.size() - 1));  // not octal
        return range(text);
      },
      "");
}

int run_server(int argc, char** argv, const ToolInfo& info, SockServerSettings settings,
               const AddFlags& add_flags) {
  CLI::App app(info.summary, info.name);
  app.formatter(std::make_shared<Help>());
  app.footer("SIGINT (Ctrl-C) or SIGTERM stops it once queued output is sent; a second one at "
             "once.");
  // A flag given twice: the last value wins (CLI11's default refuses the command line).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  // No -h: --help is the only name, and it goes last in the listing (set_help_flag below).
  app.set_help_flag();

  std::string port = info.default_port;
  app.add_option("--port", port,
                 std::string("TCP port (default ") + info.default_port +
                     "; 0 picks a free one, printed at start)")
      ->type_name("P");
  app.add_option("--threads", settings.threads,
                 "shards: threads with an epoll set each (default: one per CPU)")
      ->type_name("N")
      ->transform(whole_number(1, kMaxThreads));
  app.add_option("--accept-mode", settings.accept_mode,
                 "thread: one acceptor thread hands connections to the shards\n"
                 "(default); reuseport: one SO_REUSEPORT listener per shard")
      ->type_name("M")
      ->transform(one_of({{"thread", SOCK_ACCEPT_THREAD}, {"reuseport", SOCK_ACCEPT_REUSEPORT}}));
  app.add_option("--placement", settings.placement,
                 "the shard the acceptor picks: round-robin (default) or\n"
                 "least-loaded (fewest connections, then fewest queued bytes)")
      ->type_name("P")
      ->transform(one_of({{"round-robin", SOCK_PLACE_ROUND_ROBIN},
                          {"least-loaded", SOCK_PLACE_LEAST_LOADED}}));
  app.add_flag_callback("--pin", [&settings] { settings.pin_cpus = 1; }, "pin shard i to CPU i");
  app.add_option_function<unsigned>(
         "--idle-timeout-ms",
         [&settings](unsigned ms) { settings.idle_timeout_ms = ms == 0 ? SOCK_NO_TIMEOUT : ms; },
         "close a connection after MS ms with nothing read or sent\n(default 30000; 0: never)")
      ->type_name("MS")
      ->transform(whole_number(0, kMaxIdleTimeoutMs));
  app.add_option("--defer-accept-s", settings.defer_accept_s,
                 "accept a connection once its first bytes came, or after S s\n(TCP_DEFER_ACCEPT; "
                 "default " + std::to_string(settings.defer_accept_s) + "; 0: at once)")
      ->type_name("S")
      ->transform(whole_number(0, kMaxDeferAcceptS));
  app.add_option("--max-connections", settings.max_connections,
                 "hold at most N connections at once; more wait in the listen\nbacklog (default "
                 "0: no limit; per shard N / shards with\n--accept-mode reuseport)")
      ->type_name("N")
      ->transform(whole_number(0, kMaxConnections));
  std::string tls_cert, tls_key;
  app.add_option("--tls-cert", tls_cert, "serve TLS with this certificate chain (with --tls-key)")
      ->type_name("PEM");
  app.add_option("--tls-key", tls_key, "the certificate's private key")->type_name("PEM");
  unsigned tls_handshake_ms = SOCK_TLS_HANDSHAKE_MS;
  app.add_option("--tls-handshake-timeout-ms", tls_handshake_ms,
                 "close a TLS connection whose handshake is not done in MS ms\n(default " +
                     std::to_string(SOCK_TLS_HANDSHAKE_MS) + "; 0: never)")
      ->type_name("MS")
      ->transform(whole_number(0, kMaxIdleTimeoutMs));
  if (add_flags) add_flags(app);
  app.set_help_flag("--help", "print this help");

  try {
    app.parse(argc, argv);
    if (tls_cert.empty() != tls_key.empty()) {
      throw CLI::ValidationError("--tls-cert and --tls-key", "are given together or not at all");
    }
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s\n", info.name, e.what());
    std::fputs(app.help().c_str(), stderr);
    return 2;
  }
  settings.port = port.c_str();
  const bool tls = !tls_cert.empty();
  if (tls) {
    g_tls = sock_tls_server_new(tls_cert.c_str(), tls_key.c_str());
    if (!g_tls || (info.alpn && sock_tls_set_alpn(g_tls, info.alpn) < 0) ||
        sock_tls_set_handshake_timeout(g_tls, tls_handshake_ms) < 0) {
      std::fprintf(stderr, "%s: cannot serve TLS: %s\n", info.name, sock_tls_error());
      return 1;
    }
    g_tool_on_open = settings.on_open;
    settings.on_open = on_open_tls;
  }

  SockServer* server = sock_server_start_fn(settings);
  if (!server) {
    std::fprintf(stderr, "%s: cannot start: %s\n", info.name, std::strerror(errno));
    sock_tls_free(g_tls);
    return 1;
  }
  g_server.store(server);
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::printf(tls && info.listening_tls ? info.listening_tls : info.listening,
              sock_server_port(server));
  std::printf("\n");
  std::fflush(stdout);

  sock_server_wait(server);
  sock_server_stop(server);  // cannot fail for a started server
  sock_tls_free(g_tls);      // every connection, and its reference, is gone
  return 0;
}

}  // namespace tools
