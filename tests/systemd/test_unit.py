"""The shipped unit passes `systemd-analyze verify` and rates exposure <= 2.0 offline (Debian package systemd)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tradingd.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def _unit_with_real_binary(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists; point it at this checkout's console script.
    exe = Path(sys.executable).with_name("tradingd")
    assert exe.exists(), "console script missing: pip install -e ."
    text = UNIT.read_text().replace("/opt/tradingd/.venv/bin/tradingd", str(exe))
    out = tmp_path / "tradingd.service"
    out.write_text(text)
    return out


def test_unit_essentials():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "User=tradingd",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "ReadWritePaths=", "LoadCredential=", "EnvironmentFile=", "RestartPreventExitStatus=2 3"):
        assert line in text, line


def test_systemd_analyze_verify(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tradingd.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_security_exposure_at_most_2(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, m.group(0)
