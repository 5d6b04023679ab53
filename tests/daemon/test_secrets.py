"""Secrets come from systemd credentials ($CREDENTIALS_DIRECTORY/<name>, as the unit's LoadCredential= loads
them), then from the environment; the daemon started the way the installer sets it up finds its API keys."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import secrets

ROOT = Path(__file__).resolve().parents[2]


def test_credentials_directory_first_then_environment(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / secrets.API_KEY).write_text("key-from-systemd\n")
    (creds / secrets.API_SECRET).write_text("")  # the installer creates empty files: fall back to the env
    env = {"CREDENTIALS_DIRECTORY": str(creds), "K": "key-from-env", "S": "secret-from-env"}
    assert secrets.read_secret(env, secrets.API_KEY, "K") == "key-from-systemd"
    assert secrets.read_secret(env, secrets.API_SECRET, "S") == "secret-from-env"
    assert secrets.read_secret(env, secrets.CONTROL_TOKEN, "T") == ""          # neither: empty
    assert secrets.read_secret({"K": "key-from-env"}, secrets.API_KEY, "K") == "key-from-env"


def test_names_match_the_unit_and_the_installer():
    unit = (ROOT / "systemd" / "tradingd.service").read_text()
    loaded = dict(re.findall(r"^LoadCredential=([^:\s]+):(\S+)$", unit, re.M))
    assert set(loaded) >= {secrets.API_KEY, secrets.API_SECRET}
    installer = (ROOT / "scripts" / "install-systemd.sh").read_text()
    for name in (secrets.API_KEY, secrets.API_SECRET):
        src = Path(loaded[name])
        assert src.parent.as_posix() in installer and src.name in installer, (name, src)


@pytest.mark.timeout(60)
def test_daemon_takes_testnet_keys_from_systemd_credentials(tmp_path):
    """No key variables in the environment, only the credentials directory: the broker's credential check
    passes and start-up stops later, at the (disabled) first-run training."""
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / secrets.API_KEY).write_text("cred-key\n")
    (creds / secrets.API_SECRET).write_text("cred-secret\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[general]
symbols = ["BTCUSDT"]
timeframes = ["1m"]
data_dir = "{tmp_path / 'var'}"

[venue]
mode = "simulate"
api_key_env = "TNTEST_KEY_UNSET"
api_secret_env = "TNTEST_SECRET_UNSET"

[simulator]
history_days = 1

[engines]
train_on_first_run = false

[broker]
kind = "testnet"

[http]
port = 0
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TNTEST_")}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    p = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                       capture_output=True, timeout=50)
    assert b"credentials missing" not in p.stderr, p.stderr[-2000:]
    assert p.returncode == 3 and b"train_on_first_run is false" in p.stderr, p.stderr[-2000:]
