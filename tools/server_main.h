// tools/server_main.h: what the demo servers share besides their callbacks: the command line
// (--port, --threads, --accept-mode, --placement, --pin, --idle-timeout-ms, --defer-accept-s,
// --max-connections, --tls-cert, --tls-key, --tls-handshake-timeout-ms, --help, and any flags
// of the tool's own, all parsed by one CLI11 app) and the life of a sharded server (start,
// print where it listens, stop gracefully on SIGINT or SIGTERM). With --tls-cert and --tls-key
// every connection speaks TLS (engine/tls/sock_tls.h): the layer is set before the tool's
// on_open runs.
#ifndef TOOLS_SERVER_MAIN_H_
#define TOOLS_SERVER_MAIN_H_

#include <cstdint>
#include <functional>

#include <CLI/CLI.hpp>

#include "shards/server.h"

namespace tools {

// The TCP_DEFER_ACCEPT of the HTTP tools (SockServerSettings.defer_accept_s), as Apache
// httpd's `AcceptFilter http data` and nginx's `listen ... deferred`: an HTTP client speaks
// first, so a connection is worth a wakeup only once its request came. A client that connects
// and sends nothing is accepted after about this many seconds all the same.
inline constexpr unsigned kHttpDeferAcceptS = 1;

struct ToolInfo {
  const char* name;          // in messages and the usage line: "echo_server"
  const char* summary;       // what it does, one line of --help
  const char* default_port;  // when --port is not given
  const char* listening;     // the first stdout line, a printf format given the port (an int)
  const char* listening_tls = nullptr;  // the same with TLS (nullptr: `listening`)
  const char* alpn = nullptr;           // the protocols TLS offers (sock_tls_set_alpn), or none
};

// Adds the tool's own options to the app that parses the shared ones, so that --help lists
// them all and a bad value takes the same error path. Its option callbacks run during the
// parse, on the main thread, before the server starts; one that throws CLI::ValidationError
// refuses the command line like any bad value.
using AddFlags = std::function<void(CLI::App& app)>;

// Parses argv into `settings` (which brings the callbacks; a flag given overrides its field:
// --idle-timeout-ms 0 sets idle_timeout_ms to SOCK_NO_TIMEOUT, not to 0, the 30 s default)
// and into whatever add_flags bound, runs the server until SIGINT or SIGTERM, then stops it
// gracefully (queued output drains; a second signal kills at once). Call it from main: it
// installs the signal handlers.
// Returns main's exit status: 0 after a stop or --help (the usage on stdout), 1 if the server
// cannot start (a certificate or key that does not load included: the message says why), 2
// for a bad command line (a message naming the flag, then the usage, on stderr; nothing
// listens).
int run_server(int argc, char** argv, const ToolInfo& info, SockServerSettings settings,
               const AddFlags& add_flags = nullptr);

// A transform for add_option: a whole decimal number from min to max (max below UINT64_MAX,
// which is what an overflowing number reads as). CLI11's own conversion would also take a
// sign, leading spaces, hex ("0x10") and a leading zero as octal ("010" as 8).
CLI::Validator whole_number(std::uint64_t min, std::uint64_t max);

}  // namespace tools

#endif  // TOOLS_SERVER_MAIN_H_
