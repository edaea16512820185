#!/usr/bin/env bash
# Debian's chromium for the console's browser tests (Playwright drives it; nothing downloads a
# browser build). Installs it when this runs as root with apt; fails when it is still missing.
set -u
CHROMIUM=$(command -v chromium || echo /usr/bin/chromium)
if [ -x "$CHROMIUM" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1
fi
command -v chromium >/dev/null || { echo "could not install Debian's chromium (apt-get install chromium)" >&2; exit 1; }
