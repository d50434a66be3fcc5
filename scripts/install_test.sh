#!/usr/bin/env bash
# Installs StreamRec with its test tools: scripts/install.sh, then the `test` extras, then two Debian
# packages the tests drive: chromium (the dashboard test, through playwright) and prometheus
# (promtool for the alert rules' tests, and the server tests/integration/test_alerting.py starts).
# The prometheus package may enable and start a system service; the tests start their own server,
# so the service is stopped and disabled here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: install Debian's $* by hand" >&2; exit 1; }
  [ -n "${APT_UPDATED:-}" ] || { $SUDO apt-get update; APT_UPDATED=1; }
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
command -v chromium >/dev/null 2>&1 || apt_install chromium
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  # Without recommends: they add prometheus-node-exporter, another daemon the tests do not use.
  apt_install --no-install-recommends prometheus
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service || true
  else
    $SUDO invoke-rc.d prometheus stop >/dev/null 2>&1 || true
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    $SUDO deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
  fi
fi
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 \
  || { echo "test install failed: chromium, promtool or prometheus missing" >&2; exit 1; }
