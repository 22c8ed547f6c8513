#!/usr/bin/env bash
# The dashboard's browser assets and the browser its test runs in:
# - Chart.js from the npm registry (controller/dashboard/package-lock.json, `npm ci`), its UMD
#   build copied to controller/dashboard/static/vendor/ (served by the controller; nothing is
#   fetched at run time);
# - Debian's chromium for tests/dashboard (skipped with a message when it cannot be installed).
# node/npm and chromium come from Debian's packages when we are root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
apt_install() {
  [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 || return 1
  apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1)
}
command -v npm >/dev/null 2>&1 || apt_install nodejs npm \
  || { echo "install_dashboard: npm is missing and could not be installed" >&2; exit 1; }
dash=controller/dashboard
npm ci --prefix "$dash" --no-audit --no-fund --loglevel=error >/dev/null
mkdir -p "$dash/static/vendor"
tmp=$(mktemp "$dash/static/vendor/.chart.XXXXXX")
cp "$dash/node_modules/chart.js/dist/chart.umd.min.js" "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$dash/static/vendor/chart.umd.min.js"
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium || echo "install_dashboard: chromium not installed: tests/dashboard will skip" >&2
fi
