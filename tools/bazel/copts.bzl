"""Compiler flags for the project's own code, in one place."""

# Warnings are errors on our code only; third-party code keeps its own flags.
COPTS = ["-Wall", "-Wextra", "-Werror"]

# The tests' own code (tests/, but for the fuzz targets): what the sanitizers check and the
# benchmarks time is the library's code, built with the configuration's optimisation; the
# tests' code (gtest's macros expanded in every TEST) is built unoptimised with line tables
# only (-g1: a sanitizer's report still names file and line). A test file that took 65 s to
# compile under ASan + UBSan at -O1 -g takes 11 s, and .ci/run builds each of them 3 times.
TEST_COPTS = COPTS + ["-O0", "-g1"]
