#!/usr/bin/env bash
# check-thread-safety.sh — clang's static lock checking (-Wthread-safety) over every translation
# unit that can see an annotated mutex (CONVENTIONS.md: "any mutex that remains is annotated and
# built with clang -Wthread-safety in CI").
#
#   scripts/check-thread-safety.sh [BUILD_DIR]     (default: build/dev; ctest passes its own)
#
# Which files: every *.cc under src/ and tests/ that includes base/mutex.h, directly or through
# project headers. How: each file's command from BUILD_DIR/compile_commands.json, keeping only
# what shapes the preprocessed source (-D/-U/-I/-isystem/-std/...), compiled by clang++ with
# -fsyntax-only -Wthread-safety -Wthread-safety-beta -Werror. Nothing is written.
#
# Run it after a build: some files include headers generated into BUILD_DIR (protobuf).
# Exit status: 0 when every file is clean; 1 on any warning or error, or when clang++, python3 or
# the compilation database is missing (scripts/install-deps.sh installs clang).
#
# The sources checked are the ones beside this script. When that checkout is not the one
# BUILD_DIR was configured from (a second worktree, a scratch copy), source paths in the
# database are mapped onto this checkout; generated headers still come from BUILD_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-$root/build/dev}"

fail() {
  echo "check-thread-safety: $*" >&2
  exit 1
}

clangxx=""
for c in clang++ clang++-14; do
  if command -v "$c" >/dev/null 2>&1; then
    clangxx="$(command -v "$c")"
    break
  fi
done
[ -n "$clangxx" ] || fail "clang++ not found; it is needed for -Wthread-safety (gcc has no such" \
  "analysis). Install it with scripts/install-deps.sh (package clang)."
command -v python3 >/dev/null 2>&1 || fail "python3 not found"
[ -d "$build_dir" ] || fail "build directory $build_dir does not exist; run 'make build' first"
build_dir="$(cd "$build_dir" && pwd)"
[ -f "$build_dir/compile_commands.json" ] ||
  fail "$build_dir/compile_commands.json not found; configure and build first ('make build')"

exec python3 - "$root" "$build_dir" "$clangxx" <<'PY'
import json
import os
import re
import shlex
import subprocess
import sys

root, build_dir, clangxx = sys.argv[1:4]
MUTEX_HEADER = os.path.join(root, "src", "base", "mutex.h")
SCANNED = [os.path.join(root, d) for d in ("src", "tests")]
CHECK_FLAGS = ["-fsyntax-only", "-Wthread-safety", "-Wthread-safety-beta", "-Werror"]


def under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# The checkout BUILD_DIR was configured from, to map its source paths onto `root`.
configured_root = root
try:
    with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith("CMAKE_HOME_DIRECTORY:"):
                configured_root = os.path.realpath(line.split("=", 1)[1].strip())
except OSError:
    pass


def to_root(path):
    if configured_root == root or under(path, build_dir) or not under(path, configured_root):
        return path
    return os.path.join(root, os.path.relpath(path, configured_root))


# ---- which files: the project include graph, followed to base/mutex.h -------------------------

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
includes_of = {}


def project_includes(path):
    if path not in includes_of:
        try:
            with open(path, errors="replace") as f:
                names = INCLUDE.findall(f.read())
        except OSError:
            names = []
        found = []
        for name in names:
            for base in [os.path.dirname(path)] + SCANNED:
                candidate = os.path.normpath(os.path.join(base, name))
                if os.path.isfile(candidate):
                    found.append(candidate)
                    break
        includes_of[path] = found
    return includes_of[path]


def sees_mutex(path):
    seen, stack = set(), [path]
    while stack:
        p = stack.pop()
        if p == MUTEX_HEADER:
            return True
        if p not in seen:
            seen.add(p)
            stack.extend(project_includes(p))
    return False


# ---- how: each file's compile command, reduced to what shapes its source ---------------------

KEEP_WITH_VALUE = {"-D", "-U", "-I", "-isystem", "-iquote", "-idirafter", "-include", "-imacros"}
KEEP_PREFIX = ("-D", "-U", "-I", "-std=", "-isystem", "-iquote", "-idirafter")
KEEP_EXACT = {"-pthread", "-fno-exceptions", "-fno-rtti", "-funsigned-char"}


def check_args(entry):
    args = entry.get("arguments") or shlex.split(entry["command"])
    out = []
    i = 1  # args[0] is the compiler
    while i < len(args):
        a = args[i]
        if a in KEEP_WITH_VALUE and i + 1 < len(args):
            value = args[i + 1]
            if a != "-D" and a != "-U":
                value = to_root(os.path.join(entry["directory"], value))
            out += [a, value]
            i += 2
            continue
        if a.startswith(("-I", "-isystem", "-iquote", "-idirafter")) and a not in KEEP_WITH_VALUE:
            flag = next(p for p in ("-isystem", "-iquote", "-idirafter", "-I") if a.startswith(p))
            out.append(flag + to_root(os.path.join(entry["directory"], a[len(flag):])))
        elif a.startswith(KEEP_PREFIX) or a in KEEP_EXACT:
            out.append(a)
        i += 1
    return out


with open(os.path.join(build_dir, "compile_commands.json")) as f:
    database = json.load(f)

todo = {}
for entry in database:
    source = to_root(os.path.normpath(os.path.join(entry["directory"], entry["file"])))
    if not source.endswith(".cc") or not any(under(source, d) for d in SCANNED):
        continue
    if source in todo or not sees_mutex(source):
        continue
    todo[source] = entry

if not todo:
    sys.exit(f"check-thread-safety: no file in {build_dir}/compile_commands.json includes "
             "base/mutex.h; is that the right build directory?")

failed = []
for source in sorted(todo):
    entry = todo[source]
    cmd = [clangxx] + CHECK_FLAGS + check_args(entry) + [source]
    rel = os.path.relpath(source, root)
    r = subprocess.run(cmd, cwd=entry["directory"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if r.returncode == 0 and not r.stdout.strip():
        print(f"ok    {rel}", flush=True)
        continue
    failed.append(rel)
    print(f"FAIL  {rel}\n{r.stdout.rstrip()}", flush=True)
    if "file not found" in r.stdout:
        print(f"      (a missing header: is {build_dir} built? generated headers come from it)")

print(f"check-thread-safety: {len(todo) - len(failed)}/{len(todo)} files clean with "
      f"{os.path.basename(clangxx)} {' '.join(CHECK_FLAGS[1:])}")
if failed:
    print("check-thread-safety: warnings in: " + " ".join(failed))
    sys.exit(1)
PY
