#!/usr/bin/env bash
# tools/install as a user runs it, outside Bazel (run by .ci/run): install into a temporary
# prefix, then check what was installed and build programs against it.
#   - the files, the SONAME and its links, the exported symbols (== tools/dist/libsock.symbols);
#     dlopen with either of docs/install.md's static TLS remedies;
#   - each installed header compiles alone as C99, C11 and C++20, and each pinned setting
#     (BUFFER_PACKET_SIZE, ...) refuses another value than the library's;
#   - echo.c, built by a plain Makefile with pkg-config, shared and static, echoes;
#   - find_package(libsock) takes MAJOR.0 and refuses MAJOR+1 and (MAJOR-1).9; the CMake
#     consumer (find_package(libsock 2 CONFIG REQUIRED)), shared and static, echoes,
#     also after the installed tree moved;
#   - a DESTDIR install stages the same files under DESTDIR, none of them naming DESTDIR;
#   - bad arguments fail with a message.
# Ends with "N passed, N failed"; exits 1 if any check failed.
#   tests/tools/install/install_test.sh
set -uo pipefail
cd "$(dirname "$0")/../../.."
tools/deps --consumers || exit 1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
# check NAME COMMAND...: runs it; its output is shown only when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' <<<"$out"
  fi
}

# A blank in the prefix: every installed path must survive quoting, pkg-config's output too.
prefix="$tmp/the prefix"
if ! tools/install --prefix "$prefix" >"$tmp/install.log" 2>&1; then
  cat "$tmp/install.log"; echo "0 passed, 1 failed"; exit 1
fi
lib=$prefix/lib include=$prefix/include/libsock
version=$(sed -n 's/^Version: //p' "$lib/pkgconfig/libsock.pc")
major=${version%%.*}

expected_files() {
  cat <<FILES
include/libsock/libreact.h
include/libsock/libsock.h
include/libsock/server.h
include/libsock/sharded_server.h
include/libsock/sock_tls.h
lib/cmake/libsock/libsockConfig.cmake
lib/cmake/libsock/libsockConfigVersion.cmake
lib/libsock.a
lib/libsock.so
lib/libsock.so.$major
lib/libsock.so.$version
lib/pkgconfig/libsock.pc
FILES
}
files_of() { (cd "$1" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort); }
check "installs exactly the expected files" diff <(expected_files) <(files_of "$prefix")
check "SONAME is libsock.so.$major" \
  bash -c "readelf -d '$lib/libsock.so.$version' | grep -q 'Library soname: \[libsock.so.$major\]'"
check "libsock.so -> libsock.so.$major -> libsock.so.$version" \
  test "$(readlink "$lib/libsock.so")" = "libsock.so.$major" -a \
       "$(readlink "$lib/libsock.so.$major")" = "libsock.so.$version"
check "the library loads on its own (every dependency named)" \
  bash -c "! ldd -r '$lib/libsock.so.$version' 2>&1 | grep -E 'undefined symbol|not found'"
# dlopen needs more static TLS than glibc keeps spare (libjemalloc.so.2's initial-exec
# thread-locals): docs/install.md's remedy must work.
dlopen_program() {
  printf '%s\n' '#include <dlfcn.h>' '#include <stdio.h>' 'int main(int c, char** v) {' \
    '  (void)c; if (dlopen(v[1], RTLD_NOW)) return 0; puts(dlerror()); return 1; }' |
    gcc -x c - -o "$tmp/dlopen"
}
dlopen_with() { env "$@" "$tmp/dlopen" "$lib/libsock.so.$major"; }
check "a dlopen program builds" dlopen_program
check "dlopen loads libsock.so.$major with glibc's static TLS reserve raised" \
  dlopen_with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
check "dlopen loads libsock.so.$major with libjemalloc.so.2 preloaded" \
  dlopen_with LD_PRELOAD=libjemalloc.so.2
check "exports exactly tools/dist/libsock.symbols" \
  diff <(grep -v '^#' tools/dist/libsock.symbols) \
       <(nm -D -g --defined-only "$lib/libsock.so.$version" | awk '{print $3}' | sort)
check "libsock.a holds the API" \
  bash -c "nm -g --defined-only '$lib/libsock.a' 2>/dev/null | grep -qw sock_server_start_fn"

for header in "$include"/*.h; do
  name=${header##*/}
  for std in c99 c11; do
    check "$name compiles alone as ${std^^}" \
      gcc -std=$std -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$include" -x c "$header"
  done
  check "$name compiles alone as C++20" \
    g++ -std=c++20 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$include" -x c++ "$header"
done
# Every pinned setting ("#if NAME != VALUE" in an installed header): the built value compiles,
# another one stops at the #error. BUFFER_PACKET_SIZE must be among them (struct Packet).
pinned_settings() { sed -n 's/^#if \([A-Z_]*\) != \([0-9]*\)$/\1 \2/p' "$include"/*.h; }
probe='#include "libsock.h"'
compile_with() { gcc -std=c11 -fsyntax-only "-D$1" -I"$include" -x c - <<<"$probe"; }
refused_with() {
  local out
  ! out=$(compile_with "$1=$(($2 + 1))" 2>&1) && grep -q "$1 must be $2" <<<"$out"
}
check "BUFFER_PACKET_SIZE is pinned" bash -c "grep -q '^#if BUFFER_PACKET_SIZE != ' '$include/libsock.h'"
while read -r name value; do
  check "$name=$value (the built value) compiles" compile_with "$name=$value"
  check "$name=$((value + 1)) is refused" refused_with "$name" "$value"
done < <(pinned_settings)

# The Makefile consumer, from a copy (nothing is built in the source tree).
cp -r tests/tools/install "$tmp/make"
export PKG_CONFIG_PATH=$lib/pkgconfig
check "Makefile + pkg-config build echo and echo_static" make -C "$tmp/make" --no-print-directory
check "echo (shared) echoes" "$tmp/make/echo"
check "echo runs on the installed libsock.so.$major" \
  bash -c "ldd '$tmp/make/echo' | grep -q '=> $lib/libsock.so.$major '"
check "echo_static echoes" "$tmp/make/echo_static"
check "echo_static needs no libsock.so" bash -c "! ldd '$tmp/make/echo_static' | grep -q libsock"
unset PKG_CONFIG_PATH

# cmake_consumer PREFIX BUILD: configures and builds the CMake consumer against PREFIX.
cmake_consumer() {
  cmake -S tests/tools/install/cmake -B "$2" -DCMAKE_PREFIX_PATH="$1" -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$2"
}
check "CMake find_package(libsock $major CONFIG REQUIRED) builds" cmake_consumer "$prefix" "$tmp/cmake"
check "CMake consumer (libsock::sock) echoes" "$tmp/cmake/echo_server_cxx"
check "CMake consumer (libsock::sock_static) echoes" "$tmp/cmake/echo_server_cxx_static"
# find_package(libsock REQUEST) in a C project: accepted (0), or refused for its version (1).
# The accepted request is the control: the refusals are then about the version alone.
find_version() {
  local dir=$tmp/find-$1 out
  mkdir -p "$dir" &&
    printf '%s\n' 'cmake_minimum_required(VERSION 3.16)' 'project(find C)' \
      "find_package(libsock $1 CONFIG REQUIRED)" >"$dir/CMakeLists.txt" || return 2
  out=$(cmake -S "$dir" -B "$dir/build" -DCMAKE_PREFIX_PATH="$prefix" 2>&1) && return 0
  grep -q "compatible with requested version" <<<"$out" && return 1
  echo "$out"; return 2
}
version_refused() { find_version "$1"; (($? == 1)); }
check "find_package(libsock $major.0) is accepted" find_version "$major.0"
check "find_package(libsock $((major + 1))) is refused" version_refused "$((major + 1))"
check "find_package(libsock $((major - 1)).9) is refused" version_refused "$((major - 1)).9"
# The CMake files name no directory: the tree may move.
moved_consumer() {
  cmake_consumer "$tmp/moved" "$tmp/cmake-moved" && "$tmp/cmake-moved/echo_server_cxx"
}
mv "$prefix" "$tmp/moved"
check "CMake consumer builds and runs after the prefix moved" moved_consumer
mv "$tmp/moved" "$prefix"

# DESTDIR staging: the same files under DESTDIR/PREFIX, and no installed file names DESTDIR.
# The prefix: a directory that does not exist, where a leak would show.
stage=$tmp/stage staged_prefix=$tmp/absent/prefix
if tools/install --prefix "$staged_prefix" --destdir "$stage" >"$tmp/install.log" 2>&1; then
  check "--destdir stages the same files under DESTDIR/PREFIX" \
    diff <(files_of "$prefix") <(files_of "$stage$staged_prefix")
  check "no staged file names DESTDIR" bash -c "! grep -rlF '$stage' '$stage'"
  check "libsock.pc names the prefix" grep -qx "prefix=$staged_prefix" \
    "$stage$staged_prefix/lib/pkgconfig/libsock.pc"
  check "nothing is written outside DESTDIR" test ! -e "$tmp/absent"
else
  failed=$((failed + 1)); echo "FAIL tools/install --destdir"; cat "$tmp/install.log"
fi

# Bad arguments: a message naming the problem, exit status 2, nothing built.
bad_argument() {
  local out
  out=$(tools/install "${@:2}" 2>&1)
  (($? == 2)) && grep -q "$1" <<<"$out"
}
check "a relative --prefix is refused" bad_argument "must be an absolute path" --prefix relative/dir
check "an unknown argument is refused" bad_argument "unknown argument '--frobnicate'" --frobnicate
check "--prefix without a value is refused" bad_argument "needs a directory" --prefix
check "an empty --destdir is refused" bad_argument "needs a directory" --destdir ""

echo "$passed passed, $failed failed"
((failed == 0))
