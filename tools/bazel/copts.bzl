"""Compiler flags for the project's own code, in one place."""

# Warnings are errors on our code only; third-party code keeps its own flags.
COPTS = ["-Wall", "-Wextra", "-Werror"]
