#!/usr/bin/env bash
# Build the tagger binary (dist/tagger/, one folder) from a venv that holds only the runtime
# dependencies, then smoke-test it.
#
#   scripts/build_binary.sh [--onefile] [--force] [--model FILE.onnx]
#
#   --onefile          also build dist/tagger-onefile
#   --force            rebuild even when nothing changed
#   --model FILE.onnx  the smoke test also tags a few generated photos with this model
#
# Environment: PYTHON (default python3) makes the venv; BINARY_VENV (default build/binary-venv).
# The venv is kept and reused while pyproject.toml and the Python are unchanged, and the bundle
# while tagger/, tagger.spec and the venv are unchanged, so a second run takes seconds.
# Exit status: 0 built and checked; 77 PyInstaller could not be installed; anything else failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binary venv must import the package it installed, never a checkout named by the caller's
# PYTHONPATH (a test run from a worktree sets it): tagger.spec refuses to bundle a source tree.
unset PYTHONPATH
PYTHON="${PYTHON:-python3}"
VENV="${BINARY_VENV:-build/binary-venv}"
STAMPS=build/binary-stamps
EXIT_NO_PYINSTALLER=77

onefile=0 force=0 model=""
while [ $# -gt 0 ]; do
    case "$1" in
        --onefile) onefile=1 ;;
        --force) force=1 ;;
        --model) model="$(realpath "$2")"; shift ;;
        *) echo "build_binary.sh: unknown option $1 (use --onefile, --force, --model FILE)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "build_binary: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
digest() { sha256sum | cut -c1-16; }

mkdir -p "$STAMPS"
# Two builds at once (two test runs in one checkout) would tear down each other's venv and bundle.
exec 9> build/binary-build.lock
flock 9

# 1. The runtime-only venv: the package with its bundle extra, never the training ones. HEIC comes
#    from pi-heif, the decode-only build of pillow-heif: the binary never encodes, and pillow-heif's
#    x265 encoder alone (22 MB, GPL) would take the bundle over its 150 MB budget.
HEIF_DECODER="pi-heif>=0.18"
deps_key="$( { cat pyproject.toml; echo "$HEIF_DECODER"; "$PYTHON" -c 'import sys; print(sys.version)'; } | digest)"
if [ "$force" = 1 ] || [ "$(cat "$VENV/.deps-key" 2>/dev/null)" != "$deps_key" ]; then
    say "making $VENV (runtime dependencies + PyInstaller)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    if ! "$VENV/bin/python" -m pip install -q ".[bundle]" "$HEIF_DECODER"; then
        # Tell "no PyInstaller for this platform" (a skip for the tests) from a broken runtime install.
        "$VENV/bin/python" -m pip install -q . "$HEIF_DECODER" || fail "could not install the runtime dependencies"
        say "PyInstaller could not be installed (pip install \"tagger[bundle]\")"
        exit "$EXIT_NO_PYINSTALLER"
    fi
    rm -f "$VENV/.src-key"
    echo "$deps_key" > "$VENV/.deps-key"
fi
for heavy in torch onnx pillow_heif; do
    if "$VENV/bin/python" -c "import $heavy" 2>/dev/null; then
        fail "$VENV holds $heavy: the binary venv must hold the runtime dependencies only"
    fi
done

# 2. The package itself, reinstalled (not editable: the spec needs real files) when its code changed.
src_key="$( { cat pyproject.toml; find tagger -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 cat; } | digest)"
if [ "$(cat "$VENV/.src-key" 2>/dev/null)" != "$src_key" ]; then
    say "installing the tagger package into $VENV"
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall .
    echo "$src_key" > "$VENV/.src-key"
fi

# 3. The bundle.
build_key="$( { echo "$deps_key $src_key $onefile"; cat tagger.spec scripts/tagger_binary.py; } | digest)"
if [ "$force" = 0 ] && [ -x dist/tagger/tagger ] && [ "$(cat "$STAMPS/build-key" 2>/dev/null)" = "$build_key" ] \
        && { [ "$onefile" = 0 ] || [ -x dist/tagger-onefile ]; }; then
    say "dist/tagger is up to date"
else
    say "building dist/tagger with PyInstaller"
    rm -f "$STAMPS/build-key"
    spec_args=()
    [ "$onefile" = 1 ] && spec_args=(-- --onefile)
    "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
        tagger.spec "${spec_args[@]}"
    echo "$build_key" > "$STAMPS/build-key"
fi

# 4. Smoke test: the binary starts, reports the installed version, lists commands, refuses to train,
#    loads ONNX Runtime, and holds no torch.
smoke() {
    local bin="$1" work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    local want
    want="tagger, version $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tagger"))')"
    [ "$("$bin" --version)" = "$want" ] || fail "$bin --version: expected '$want'"
    "$bin" --help | grep -q "tag " || fail "$bin --help lists no tag command"
    TAGGER_HOME="$work/home" "$bin" models 2>/dev/null || fail "$bin models"
    # A file that is not a model must be refused by ONNX Runtime with one line, exit 1.
    printf 'not a model' > "$work/bad.onnx"
    mkdir "$work/photos"
    "$VENV/bin/python" -c 'import sys; from PIL import Image; Image.new("RGB", (64, 48), (250, 5, 5)).save(sys.argv[1])' \
        "$work/photos/red.jpg"
    local status=0
    "$bin" tag "$work/photos" --model "$work/bad.onnx" -q > "$work/out" 2>&1 || status=$?
    [ "$status" = 1 ] && grep -q "bad.onnx" "$work/out" && ! grep -q Traceback "$work/out" \
        || fail "$bin tag with a bad model: want exit 1 and one line, got $status: $(cat "$work/out")"
    if [ -n "$model" ]; then
        "$bin" tag "$work/photos" --model "$model" -q || fail "$bin tag --model $model"
        [ -s "$work/photos/red.jpg.json" ] || fail "$bin tag wrote no sidecar"
    fi
    # Training and export are left out; where the commands exist, they must say how to get them.
    printf 'red\nblue\n' > "$work/labels.txt"
    local command
    for command in train export; do
        "$bin" --help | grep -q "^  $command " || continue
        "$bin" "$command" --help > /dev/null || fail "$bin $command --help"
        local args=("$work/photos")
        [ "$command" = train ] && args=(--labels "$work/labels.txt" --data "$work/photos")
        status=0
        "$bin" "$command" "${args[@]}" > "$work/out" 2>&1 || status=$?
        [ "$status" != 0 ] && grep -q 'tagger\[train\]' "$work/out" && ! grep -q Traceback "$work/out" \
            || fail "$bin $command: want one line saying pip install \"tagger[train]\", got: $(head -c 600 "$work/out")"
    done
}
torch_files="$(find dist/tagger \( -name 'libtorch*' -o -name 'libc10*' -o -type d \( -name torch \
    -o -name torchvision -o -name open_clip -o -name triton \) \) -print | head -5)"
[ -z "$torch_files" ] || fail "dist/tagger contains torch: $torch_files"
smoke dist/tagger/tagger
[ "$onefile" = 1 ] && smoke dist/tagger-onefile
say "ok: dist/tagger ($(du -sm dist/tagger | cut -f1) MB)$([ "$onefile" = 1 ] && echo ", dist/tagger-onefile ($(du -sm dist/tagger-onefile | cut -f1) MB)")"
