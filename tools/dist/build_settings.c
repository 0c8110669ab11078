/* Prints the settings the installed headers pin, as this build compiled them: tools/install
 * builds it with the library (same configuration, same -D flags, a ~/.bazelrc's included) and
 * pins what it prints, so an installed header cannot claim a value its library was not built
 * with. One "NAME VALUE" line each. */
#include <stdio.h>

#include "libreact.h"
#include "libsock.h"

int main(void) {
  printf("LIBSOCK_VERSION %s\n", LIBSOCK_VERSION);
  /* struct Packet's size: the ABI. */
  printf("BUFFER_PACKET_SIZE %lld\n", (long long)(BUFFER_PACKET_SIZE));
  printf("BUFFER_FILE_READ_SIZE %lld\n", (long long)(BUFFER_FILE_READ_SIZE));
  /* Compiled into reactor_review(): a program's own value would do nothing. */
  printf("REACTOR_MAX_EVENTS %lld\n", (long long)(REACTOR_MAX_EVENTS));
  printf("REACTOR_TICK %lld\n", (long long)(REACTOR_TICK));
  return 0;
}
