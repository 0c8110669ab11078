#!/usr/bin/env bash
# Builds tools/http_server outside Bazel against an installed libsock (tools/install): the
# same sources compiled with Bazel's -c opt flags, but linked to PREFIX's libsock.so as a user's
# program would be. compare.sh and callgrind.sh run it as "ours-so" when INSTALLED=PREFIX is set,
# to hold the installed library's cost per request to the Bazel binary's.
#   bench/build_installed.sh PREFIX OUTPUT
set -euo pipefail
cd "$(dirname "$0")/.."
(($# == 2)) || { echo "usage: bench/build_installed.sh PREFIX OUTPUT" >&2; exit 2; }
prefix=$1 output=$2
include=$prefix/include/libsock
[[ -f $include/libsock.h && -f $prefix/lib/pkgconfig/libsock.pc ]] ||
  { echo "build_installed.sh: no libsock installed in $prefix (run tools/install --prefix $prefix)" >&2; exit 1; }

# The tools include the public headers by their paths in this tree (engine/libsock.h, ...):
# map those paths to the installed files (each directory gets them all, as the installed
# headers include their siblings), and search them before the tree, so no header of the tree
# is seen.
shim=$(mktemp -d); trap 'rm -rf "$shim"' EXIT
for dir in engine engine/tls shards; do
  mkdir -p "$shim/$dir"
  ln -s "$include"/*.h "$shim/$dir/"
done

# Bazel's -c opt compile flags (its toolchain's, then .bazelrc's -O2 -g), with the llhttp
# sources Debian ships.
flags=(-U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=1 -fstack-protector -fno-omit-frame-pointer
       -O2 -DNDEBUG -ffunction-sections -fdata-sections -O2 -g -I"$shim" -I.)
mkdir -p "$shim/obj"
for source in /usr/share/llhttp/{api,http,llhttp}.c; do
  gcc -std=c11 "${flags[@]}" -w -fexceptions -I/usr/share/include/llhttp -c "$source" \
    -o "$shim/obj/$(basename "$source" .c).o"
done
PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export PKG_CONFIG_PATH
g++ -std=c++20 "${flags[@]}" -I/usr/share/include/llhttp \
  tools/http_server.cc tools/server_main.cc tools/http/responder.cc tools/http/static_files.cc \
  "$shim"/obj/*.o -Wl,--gc-sections $(pkg-config --libs libsock) -Wl,-rpath,"$prefix/lib" \
  -o "$output"
