#!/usr/bin/env python3
"""(Re)creates seqcore's private OpenVINO runtime directory, idempotently.

Run with the project venv's python from the repository root (scripts/setup.sh does this).

`.ov-runtime/` holds a symlink to every file of the installed `openvino` wheel's `libs/`
directory EXCEPT TBB's affinity hook `libtbbbind*`. TBB looks for libtbbbind next to itself;
when it finds it, every synchronous infer() makes one sched_getaffinity and two
sched_setaffinity calls and briefly widens the pinned shard thread's CPU mask. seqcore dlopens
`.ov-runtime/libopenvino.so.<ver>`; its RPATH is $ORIGIN, which the dynamic loader takes from
the path we opened (not the symlink target), so libtbb and the plugins are found here and
libtbbbind is not. See ARCHITECTURE.md, "OpenVINO runtime".

Usage: ov_runtime_dir.py [--out DIR]   (default: .ov-runtime in the current directory)
"""

import argparse
import importlib.util
import os
import sys

EXCLUDED_PREFIXES = ("libtbbbind",)


def wheel_libs_dir() -> str:
    # find_spec locates the package without importing it (importing would load the runtime).
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("ov_runtime_dir: the 'openvino' package is not installed in this Python "
                 f"({sys.executable}); run 'make setup'")
    pkg = list(spec.submodule_search_locations)[0]
    libs = os.path.join(pkg, "libs")
    if not os.path.isdir(libs):
        sys.exit(f"ov_runtime_dir: {libs} does not exist; is the openvino wheel complete?")
    return os.path.realpath(libs)


def wanted(name: str) -> bool:
    return not name.startswith(EXCLUDED_PREFIXES)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".ov-runtime", help="runtime directory to (re)create")
    args = ap.parse_args()

    libs = wheel_libs_dir()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    # Relative targets keep the directory valid if the checkout is moved along with its venv.
    targets = {}
    for name in sorted(os.listdir(libs)):
        src = os.path.join(libs, name)
        if wanted(name) and os.path.isfile(src):
            targets[name] = os.path.relpath(src, out)

    changed = 0
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if name in targets and os.path.islink(path) and os.readlink(path) == targets[name]:
            continue
        # A stale or foreign entry (e.g. an old version's libraries, or a libtbbbind).
        if os.path.isdir(path) and not os.path.islink(path):
            sys.exit(f"ov_runtime_dir: unexpected directory {path}; remove it and rerun")
        os.unlink(path)
        changed += 1
    for name, target in targets.items():
        path = os.path.join(out, name)
        if not os.path.lexists(path):
            os.symlink(target, path)
            changed += 1

    if not any(n.startswith("libopenvino.so.") for n in targets):
        sys.exit(f"ov_runtime_dir: no libopenvino.so.* in {libs}")
    state = "updated" if changed else "up to date"
    print(f"ov_runtime_dir: {os.path.relpath(out)} {state} ({len(targets)} files from {libs}, "
          "without libtbbbind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
