// Built into the shared library: it does not link unless version.bzl's LIBSOCK_VERSION (the
// file names and SONAME, passed in as DIST_VERSION) is the one libsock.h declares.
#include <string_view>

#include "libsock.h"

static_assert(std::string_view(LIBSOCK_VERSION) == DIST_VERSION,
              "tools/dist/version.bzl's LIBSOCK_VERSION differs from libsock.h's");
