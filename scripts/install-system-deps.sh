#!/usr/bin/env bash
# exiftool (for --write embed and keyword reading) and exiv2 (an independent reader the tests use).
set -euo pipefail
if command -v exiftool >/dev/null && command -v exiv2 >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libimage-exiftool-perl exiv2 >/dev/null
elif command -v brew >/dev/null; then
    brew install exiftool exiv2
else
    echo "Install exiftool and exiv2 with your package manager, then run this again." >&2
    exit 1
fi
