#!/usr/bin/env bash
# What the browser test needs beyond pip: Debian's Chromium (playwright drives it; no browser
# download at test time). Installed when missing and this is root with apt-get; otherwise one
# note, and the browser test skips with the same advice.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; then
    exit 0
  fi
fi
echo "note: Chromium is not installed and could not be (needs root and apt-get: apt-get install chromium); the browser test will be skipped" >&2
