"""Background retraining in a real child process: reads bars from the store the daemon writes, gates the
challenger against the current model on held-out dollar P&L, and never raises into the caller."""
import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.retrain import RetrainManager
from daemon.store import SQLiteStore
from engines.data import Klines, klines_to_bars, load_klines_csv
from engines.registry import ModelRegistry

SPEC = {"xgb_rounds": 40, "lstm_epochs": 1, "lstm_hidden": 8, "lstm_seq_len": 8}


def _manager(store, reg, **kw):
    return RetrainManager(registry=str(reg), symbol="BTCUSDT", timeframes=["1h"], store=str(store),
                          spec_overrides=SPEC, min_bars=1000, timeout_s=240, **kw)


def test_cycles_publish_and_gate(store_with_bars, tmp_path):
    reg_dir = tmp_path / "models"
    m = _manager(store_with_bars, reg_dir)
    first = asyncio.run(m.run_once())
    assert first.ok, first.error
    d1 = first.results["1h"]["decision"]
    assert all(d["promoted"] and d["current_pnl"] is None for d in d1.values())   # nothing to beat yet
    reg = ModelRegistry(reg_dir)
    assert reg.current_version("1h", "xgboost") == d1["xgboost"]["version"]

    second = asyncio.run(m.run_once())
    assert second.ok, second.error
    d2 = second.results["1h"]["decision"]
    for kind, d in d2.items():
        assert d["current_pnl"] is not None
        assert d["promoted"] == (d["challenger_pnl"] > d["current_pnl"])
        expected = d["version"] if d["promoted"] else d1[kind]["version"]
        assert reg.current_version("1h", kind) == expected
        assert len(reg.list_versions("1h", kind)) == 2        # the challenger is published either way
    print("retrain decisions:", d2, "seconds:", round(second.seconds, 1))


def test_crashed_and_hung_retrains_are_reported_not_raised(tmp_path, monkeypatch):
    m = RetrainManager(registry=str(tmp_path / "r"), symbol="BTCUSDT", timeframes=["1h"],
                       store=str(tmp_path / "missing.sqlite"), min_bars=1000, timeout_s=60)
    out = asyncio.run(m.run_once())
    assert not out.ok and "no training data" in out.error and not m.running

    hung = RetrainManager(registry=str(tmp_path / "r"), symbol="BTCUSDT", timeframes=["1h"], timeout_s=1.0)
    monkeypatch.setattr(hung, "command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])
    out = asyncio.run(hung.run_once())
    assert not out.ok and "timed out" in out.error and out.seconds < 30


# ----------------------------------------------------------------------------- simulator bars (no shared data)
ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tradingd.service"
SYSTEM_PY = "/usr/bin/python3"  # Debian's python3-seccomp binds libseccomp for the system interpreter


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    """40 days of the simulator's 1m history in a real store (runs without ../shared/data)."""
    from daemon.config import SimulatorConfig
    from daemon.venue.simulator import MarketSimulator
    h = MarketSimulator(dataclasses.replace(SimulatorConfig(), history_days=40)).history()
    k = Klines(open_ns=h["open_ms"].astype(np.int64) * 1_000_000, open=h["open"], high=h["high"], low=h["low"],
               close=h["close"], volume=h["volume"], symbol="BTCUSDT")
    path = tmp_path_factory.mktemp("simstore") / "tradingd.sqlite"
    st = SQLiteStore(path)
    st.write_bars(klines_to_bars(k))
    st.close()
    return path


def test_gate_never_promotes_when_the_current_model_cannot_be_evaluated(sim_store, tmp_path):
    reg_dir = tmp_path / "models"
    m = _manager(sim_store, reg_dir, nice=0)
    first = asyncio.run(m.run_once())
    assert first.ok, first.error
    reg = ModelRegistry(reg_dir)
    current = {kind: reg.current_version("1h", kind) for kind in ("xgboost", "lstm")}
    for f in Path(reg.current("1h", "xgboost")).rglob("*"):  # the current model is now unreadable
        if f.is_file():
            f.write_bytes(b"garbage")
    from daemon.collector import Collector, View
    from daemon.config import Config
    from daemon.hotswap import RetrainCycle
    from daemon.metrics import Metrics
    cfg = Config()   # the daemon's side: counted in /metrics and /status, logged
    cycle = RetrainCycle(cfg, Metrics(), m, reg, engine_sets={})
    d = Collector(cfg, cycle.metrics, lambda: View(retrain=cycle))
    report = asyncio.run(cycle.run_now("test"))
    assert report["ok"], report["error"]
    res = report["results"]["1h"]
    assert res["gate_error"]
    assert not any(dec["promoted"] for dec in res["decision"].values()), res
    assert {kind: reg.current_version("1h", kind) for kind in ("xgboost", "lstm")} == current
    assert all(len(reg.list_versions("1h", kind)) == 2 for kind in current)   # published, not promoted
    assert b'tradingd_retrain_gate_errors_total{timeframe="1h"} 1.0' in d.metrics.render()
    assert d.status()["retrain"]["gate_errors"] == 1


# ------------------------------------------------------------------- the unit's own syscall filter (seccomp)
def _expand(item: str, seen: set[str]) -> set[str]:
    """A syscall or @group as `systemd-analyze syscall-filter` lists it, groups expanded recursively."""
    if not item.startswith("@"):
        return {item}
    if item in seen:
        return set()
    seen.add(item)
    out = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            names |= _expand(line, seen)
    return names


def unit_allowed_syscalls(unit_text: str) -> set[str]:
    """The allow list that the unit's SystemCallFilter= lines make, in order, as systemd merges them: the first
    (an allow list here) sets the default, later ``~`` lines remove, later plain lines add back."""
    lines = [ln.split("=", 1)[1].strip() for ln in unit_text.splitlines() if ln.startswith("SystemCallFilter=")]
    assert lines and not lines[0].startswith("~"), "expected an allow list first"
    allowed: set[str] = set()
    for ln in lines:
        deny = ln.startswith("~")
        names: set[str] = set()
        for item in ln.lstrip("~").split():
            names |= _expand(item, set())
        allowed = allowed - names if deny else allowed | names
    return allowed


_LOADER = r"""
import errno, json, os, sys
import seccomp
allowed = json.load(open(sys.argv[1]))
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))   # SystemCallErrorNumber=EPERM
for name in allowed:
    try:
        f.add_rule(seccomp.ALLOW, name)
    except Exception:   # not a syscall on this architecture / libseccomp version
        pass
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""

_SPAWN = r"""
import asyncio, json, os, sys
from daemon.retrain import RetrainManager
m = RetrainManager(registry=sys.argv[1], symbol="BTCUSDT", timeframes=["1h"], store=sys.argv[2],
                   spec_overrides=json.loads(sys.argv[3]), min_bars=1000, timeout_s=400, nice=5)
out = asyncio.run(m.run_once())
print(json.dumps({"ok": out.ok, "error": out.error, "priority": getattr(out, "priority", None),
                  "parent_nice": os.getpriority(os.PRIO_PROCESS, 0)}))
"""


def _seccomp_available() -> str | None:
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed (Debian package 'systemd')"
    if not Path(SYSTEM_PY).exists() or subprocess.run([SYSTEM_PY, "-c", "import seccomp"],
                                                      capture_output=True).returncode != 0:
        return f"libseccomp's Python binding missing for {SYSTEM_PY} (Debian package 'python3-seccomp')"
    return None


@pytest.mark.skipif(_seccomp_available() is not None, reason=str(_seccomp_available()))
@pytest.mark.timeout(600)
@pytest.mark.parametrize("unit_variant", ["shipped", "setpriority_denied"])
def test_retrain_spawn_succeeds_under_the_units_syscall_filter(unit_variant, sim_store, tmp_path):
    """The daemon side (RetrainManager) runs under the unit's own SystemCallFilter, loaded with libseccomp, and
    its child inherits it. The shipped unit lets the child lower its priority; a unit that denies setpriority
    still retrains, at the inherited priority, and says so (never "Exception occurred in preexec_fn")."""
    text = UNIT.read_text()
    if unit_variant == "setpriority_denied":
        text += "\nSystemCallFilter=~setpriority\n"
    allowed = unit_allowed_syscalls(text)
    assert "execve" in allowed and "setrlimit" not in allowed and "sched_setscheduler" not in allowed
    assert ("setpriority" in allowed) == (unit_variant == "shipped")
    (tmp_path / "allowed.json").write_text(json.dumps(sorted(allowed)))
    p = subprocess.run([SYSTEM_PY, "-c", _LOADER, str(tmp_path / "allowed.json"), sys.executable, "-c", _SPAWN,
                        str(tmp_path / "models"), str(sim_store), json.dumps(SPEC)],
                       capture_output=True, text=True, timeout=560, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["ok"], res["error"][-2000:]
    pr = res["priority"]
    if unit_variant == "shipped":
        assert pr["lowered"] and pr["nice"] == min(res["parent_nice"] + 5, 19), res
    else:
        assert not pr["lowered"] and pr["nice"] == res["parent_nice"] and pr["error"], res
    assert ModelRegistry(tmp_path / "models").current_version("1h", "xgboost") is not None
