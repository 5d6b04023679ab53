"""What a newcomer sees: `tradingd run --config config.toml` with an empty state directory, timed.

Runs the shipped config (only ``general.data_dir`` and ``http.port`` changed, so it never touches ./var or a busy
port), polls /status every 0.2 s and prints: start-up (first-run training included), time from ready to the first
decision, first order, first fill, the daemon's RSS after first-run training, then optionally a restart's RSS.

    .venv/bin/python benchmarks/bench_newcomer.py [--minutes 5] [--restart]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def run_once(cfg: Path, port: int, minutes: float, out: Path) -> dict:
    t0 = time.monotonic()
    with open(out / "stdout.log", "ab") as so, open(out / "stderr.log", "ab") as se:
        p = subprocess.Popen([str(ROOT / ".venv/bin/tradingd"), "run", "--config", str(cfg)], stdout=so, stderr=se,
                             cwd=ROOT)
    res: dict = {}
    try:
        while time.monotonic() - t0 < minutes * 60 and p.poll() is None:
            time.sleep(0.2)
            st = status(port)
            if st is None:
                continue
            now = time.monotonic() - t0
            res.setdefault("ready_s", now)
            if "rss_after_ready_mb" not in res and now - res["ready_s"] > 5:
                res["rss_after_ready_mb"] = rss_mb(p.pid)
            if st.get("pipeline", {}).get("counters", {}).get("decisions", 0) > 0:
                res.setdefault("first_decision_s", now)
            if st.get("broker", {}).get("stats", {}).get("orders", 0) > 0:
                res.setdefault("first_order_s", now)
            if st.get("account", {}).get("fills", 0) > 0:
                res.setdefault("first_fill_s", now)
                res.setdefault("account_at_fill", {k: st["account"][k] for k in ("equity", "fees", "positions")})
            if "first_fill_s" in res and now - res["first_fill_s"] > 10:
                break
        res["rss_end_mb"] = rss_mb(p.pid) if p.poll() is None else None
        res["startup_timings"] = (status(port) or {}).get("timings")
    finally:
        p.terminate()
        res["exit_code"] = p.wait(30)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0, help="give up after this long per run")
    ap.add_argument("--restart", action="store_true", help="then restart on the trained registry and time again")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="newcomer-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (ROOT / "config.toml").read_text()
    text = re.sub(r'(?m)^data_dir = ".*"$', f'data_dir = "{tmp / "var"}"', text, count=1)
    text = re.sub(r"(?m)^port = 8000$", f"port = {port}", text, count=1)
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    print(json.dumps({"first_run": run_once(cfg, port, args.minutes, tmp)}, default=str), flush=True)
    if args.restart:
        print(json.dumps({"restart": run_once(cfg, port, args.minutes, tmp)}, default=str), flush=True)
    print(f"logs in {tmp}", file=sys.stderr)
    if "--keep" not in sys.argv:
        shutil.rmtree(tmp / "var", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
