"""The installed library's version: libsock.h's LIBSOCK_VERSION (version_check.cc holds them equal)."""

LIBSOCK_VERSION = "2.0.0"

# The SONAME's number: a new one only when the C ABI breaks.
LIBSOCK_SOVERSION = LIBSOCK_VERSION.split(".")[0]
