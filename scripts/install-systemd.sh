#!/usr/bin/env bash
# Install tradingd as a systemd service: a dedicated user, /opt/tradingd (code + venv), /etc/tradingd (config,
# secrets), /var/lib/tradingd (store, models, recordings). Run as root from a checkout:  sudo scripts/install-systemd.sh
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/tradingd
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
id tradingd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/tradingd --shell /usr/sbin/nologin tradingd
mkdir -p "$PREFIX" /etc/tradingd/credentials /var/lib/tradingd /var/log/tradingd
rsync -a --delete --exclude .venv --exclude var --exclude .git "$SRC/" "$PREFIX/" 2>/dev/null || cp -a "$SRC/." "$PREFIX/"
(cd "$PREFIX" && make venv)
if [ ! -f /etc/tradingd/config.toml ]; then
  # Service paths: state lives in /var/lib/tradingd (the unit's StateDirectory).
  sed 's|^data_dir = "var"|data_dir = "/var/lib/tradingd"|' "$PREFIX/config.toml" > /etc/tradingd/config.toml
fi
# Secrets: one file per credential, readable by root only; systemd hands them to the service (LoadCredential).
for c in api-key api-secret; do [ -f /etc/tradingd/credentials/$c ] || install -m 0600 /dev/null /etc/tradingd/credentials/$c; done
[ -f /etc/tradingd/env ] || install -m 0600 /dev/null /etc/tradingd/env   # e.g. TRADINGD_CONTROL_TOKEN=...
chown -R tradingd:tradingd /var/lib/tradingd /var/log/tradingd
install -m 0644 "$PREFIX/systemd/tradingd.service" /etc/systemd/system/tradingd.service
systemd-analyze verify /etc/systemd/system/tradingd.service
systemctl daemon-reload
systemctl enable --now tradingd.service
systemctl --no-pager status tradingd.service || true
