#!/usr/bin/env bash
# exiftool (for --write embed and keyword reading) and exiv2 (an independent reader the tests use);
# chromium and its driver: the real browser tests/test_review.py drives the review page with.
set -euo pipefail
if command -v exiftool >/dev/null && command -v exiv2 >/dev/null && command -v chromium >/dev/null \
        && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libimage-exiftool-perl exiv2 chromium chromium-driver >/dev/null
elif command -v brew >/dev/null; then
    brew install exiftool exiv2 chromedriver
    brew install --cask chromium
else
    echo "Install exiftool, exiv2, chromium and chromedriver with your package manager, then run this again." >&2
    exit 1
fi
