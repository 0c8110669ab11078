// tools/flags.h: what the demo servers share besides their callbacks: the command line
// (--port, --threads, --accept-mode, --placement, --pin, --idle-timeout-ms, --help) and the
// life of a sharded server (start, print where it listens, stop gracefully on SIGINT or
// SIGTERM).
#ifndef TOOLS_FLAGS_H_
#define TOOLS_FLAGS_H_

#include "shards/server.h"

namespace tools {

struct ToolInfo {
  const char* name;          // in messages and the usage line: "echo_server"
  const char* summary;       // what it does, one line of --help
  const char* default_port;  // when --port is not given
  const char* listening;     // the first stdout line, a printf format given the port (an int)
  const char* extra_usage = nullptr;  // --help lines for the tool's own flags (it parses them)
};

// Parses argv into `settings` (which brings the callbacks; a flag given overrides its field:
// --idle-timeout-ms 0 sets idle_timeout_ms to SOCK_NO_TIMEOUT, not to 0, the 30 s default),
// runs the server until SIGINT or SIGTERM, then stops it gracefully (queued output drains; a
// second signal kills at once).
// Returns main's exit status: 0 after a stop or --help, 1 if the server cannot start, 2 for
// a bad command line (with the usage on stderr).
int run_server(int argc, char** argv, const ToolInfo& info, SockServerSettings settings);

}  // namespace tools

#endif  // TOOLS_FLAGS_H_
