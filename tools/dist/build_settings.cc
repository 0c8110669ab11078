// Prints the settings the installed headers pin, as this build compiled them: tools/install
// builds it with the library (same configuration, same -D flags, --copt and --cxxopt alike,
// being C++ as the library is) and pins what it prints, so an installed header cannot claim a
// value its library was not built with. One "NAME VALUE" line each.
#include <cstdio>

#include "libreact.h"
#include "libsock.h"

int main() {
  std::printf("LIBSOCK_VERSION %s\n", LIBSOCK_VERSION);
  // struct Packet's size: the ABI.
  std::printf("BUFFER_PACKET_SIZE %lld\n", static_cast<long long>(BUFFER_PACKET_SIZE));
  std::printf("BUFFER_FILE_READ_SIZE %lld\n", static_cast<long long>(BUFFER_FILE_READ_SIZE));
  // Compiled into reactor_review(): a program's own value would do nothing.
  std::printf("REACTOR_MAX_EVENTS %lld\n", static_cast<long long>(REACTOR_MAX_EVENTS));
  std::printf("REACTOR_TICK %lld\n", static_cast<long long>(REACTOR_TICK));
  return 0;
}
