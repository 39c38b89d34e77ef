#!/usr/bin/env bash
# Make sure headless Chromium exists for the console's browser tests (tests/test_console_browser.py).
# Debian's package only: playwright drives /usr/bin/chromium; it never downloads a browser of its own.
set -euo pipefail
if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium (Debian package) for the browser tests..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  command -v chromium >/dev/null 2>&1 && exit 0
fi
echo "no chromium found: install it (apt-get install chromium) or set CHROMIUM to a Chromium binary" >&2
exit 1
