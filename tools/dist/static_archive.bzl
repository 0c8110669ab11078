"""cc_static_archive: one static library holding every object of some cc_library targets."""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")

def _objects_of(library):
    # The position-independent objects where both were built (tools/install's config builds
    # only those), so the archive can go into a PIE or a shared library.
    return library.pic_objects or library.objects

def _cc_static_archive_impl(ctx):
    objects = []
    for dep in ctx.attr.deps:
        for linker_input in dep[CcInfo].linking_context.linker_inputs.to_list():
            for library in linker_input.libraries:
                objects.extend(_objects_of(library))
    objects = depset(objects).to_list()  # a library reached by two paths counts once
    if not objects:
        fail("cc_static_archive %s: no objects (were the deps built?)" % ctx.label)

    archive = ctx.actions.declare_file(ctx.attr.out)
    args = ctx.actions.args()
    # q, not r: objects from two packages may share a name (r would keep only the last);
    # s writes the symbol index, D zeroes timestamps and owners so the archive is reproducible.
    args.add("qcsD", archive)
    args.add_all(objects)
    ctx.actions.run(
        executable = find_cpp_toolchain(ctx).ar_executable,
        arguments = [args],
        inputs = objects,
        outputs = [archive],
        mnemonic = "StaticArchive",
        progress_message = "Archiving %s" % archive.short_path,
    )
    return [DefaultInfo(files = depset([archive]))]

cc_static_archive = rule(
    implementation = _cc_static_archive_impl,
    doc = "Every object of deps and of the cc_library targets they reach, in one archive " +
          "(external libraries contribute link flags only, no objects).",
    attrs = {
        "deps": attr.label_list(providers = [CcInfo]),
        "out": attr.string(mandatory = True),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
    },
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    incompatible_use_toolchain_transition = True,
)
