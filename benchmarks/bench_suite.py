"""tradingd performance suite: ONE table of figures, each with its target and whether it is met, plus JSON.

    scripts/bench [--out bench.json] [--soak MINUTES] [--fault-soak MINUTES] [--skip peers,soak,...] [--registry DIR]

Everything runs on the real data in ../shared/data (the BTCUSDT websocket recording, the 90-day 1m klines);
nothing is asserted and nothing is invented: a figure that cannot be measured here is a row saying why.
Sections (``--skip`` takes their names):

* ingest    — bench_ingest.run(): decode / book / bars per frame (median, p99) on the recording;
* loopback  — bench_loopback.feed_run(): frames/s, venue -> real websocket -> BinanceFeed (decode + book);
* peers     — the same depth frames through cryptofeed's Binance handler and NautilusTrader's OrderBook
              (benchmarks/peers.py, run in the separate peer virtualenv ``.bench-venv``), and tradingd on those
              exact frames; ratios are tradingd ÷ peer (< 1: tradingd faster);
* models    — small XGBoost + LSTM models trained on the real klines for 1m/5m/15m/1h into a registry under
              /tmp (reused when present), loaded through daemon.engineset.EngineSet (compiled-cpu + onnxruntime-cpu);
* barclose  — bar-close inference: IncrementalFeatures.update + both models per closed bar, per timeframe, and
              the whole step at an hour boundary where all 4 timeframes close together (target <= 1 ms p99);
* backends  — bench_xgb.bench_engines() / bench_lstm.time_calls() per backend, with the peers stock xgboost
              ``inplace_predict`` (native-cpu) and PyTorch eager (torch-cpu);
* tick      — tick-to-decision: LocalVenue(ReplaySource(speed=10)) -> BinanceFeed -> TradingPipeline with the
              warmed engine sets, latency = decision done - frame receive time (TradingPipeline.latencies_ns);
* backtest  — wall time of ``tradingd backtest`` on the 90-day BTC klines, if daemon/backtest/cli.py exists;
* soak      — ``--soak MINUTES``: the recording replayed in a loop venue -> feed -> book -> bars (-> pipeline),
              RSS sampled every few seconds; start/end/max and growth in MB/h by a least-squares line.

Times are perf_counter_ns on a machine shared with other jobs (2 cores here): p99 columns carry that noise.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
REC = [DATA / "binance-ws" / "spot_btcusdt_20240808.gz", DATA / "binance-ws" / "spot_btcusdt_20240809.gz"]
KLINES = DATA / "klines" / "BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz"
TFS = ("1m", "5m", "15m", "1h")
SYM = "BTCUSDT"
PEER_VENV = ROOT / ".bench-venv"
PEER_PKGS = ("cryptofeed", "nautilus-trader")
SECTIONS = ("ingest", "loopback", "peers", "models", "barclose", "backends", "tick", "backtest", "soak", "faultsoak")

# Targets (issue #6 and the product brief). None: reported, no target.
T_INGEST_US = 12.0          # decode + book + bars, median per depth frame
T_BARCLOSE_P99_US = 1000.0  # bar-close inference, all 4 timeframes, p99
T_TICK_P99_MS = 1.0         # tick-to-decision p99 at 10x replay (issue #6)
T_SOAK_MB_H = 1.0           # RSS growth over a long replay (issue #6)
T_RSS_MB = 400.0            # RSS ceiling (issue #6)
T_BACKTEST_S = 20.0         # 90 days of 1m BTC, all 4 timeframes, both models (issue #6)
T_PEER_RATIO = 0.5          # ingest per frame: tradingd / cryptofeed <= 0.5, i.e. >= 2x faster (issue #6)


# ------------------------------------------------------------------------------------------------ table rows
class Table:
    """Rows of (section, what, value, target, met); ``met`` is True/False or None (no target / not measured)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {}

    def add(self, section: str, what: str, value: str, target: str = "", met: bool | None = None,
            **extra: Any) -> None:
        self.rows.append({"section": section, "what": what, "value": value, "target": target, "met": met, **extra})

    def missing(self, section: str, what: str, why: str, target: str = "") -> None:
        self.add(section, what, f"not measured: {why}", target, None)

    def print(self, out=sys.stdout) -> None:
        w = [9, 56, 62, 16]
        print(f"{'section':<{w[0]}} {'figure':<{w[1]}} {'value':<{w[2]}} {'target':<{w[3]}} met", file=out)
        print("-" * (sum(w) + 8), file=out)
        for r in self.rows:
            met = {True: "yes", False: "NO", None: "-"}[r["met"]]
            val = r["value"]
            lines = [val[i:i + w[2]] for i in range(0, len(val), w[2])] or [""]
            print(f"{r['section']:<{w[0]}} {r['what'][:w[1]]:<{w[1]}} {lines[0]:<{w[2]}} {r['target']:<{w[3]}} {met}",
                  file=out)
            for extra in lines[1:]:
                print(f"{'':<{w[0]}} {'':<{w[1]}} {extra}", file=out)


def us(x: float) -> str:
    return f"{x:,.1f} µs" if x < 10_000 else f"{x / 1000:,.2f} ms"


def pct(samples_ns, q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, np.float64), q)) / 1e3


def quiet(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    """Call a reused benchmark function with its own printing swallowed (the suite prints one table)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **kw)


# ------------------------------------------------------------------------------------------------ ingest
def sec_ingest(t: Table, repeat: int) -> None:
    from benchmarks import bench_ingest
    r = quiet(bench_ingest.run, ["--repeat", str(repeat), "--json"])
    if not r:
        t.missing("ingest", "decode/book/bars per frame", "recording not found")
        return
    f = r["figures"]
    t.data["ingest"] = r
    for name in ("decode depth frame", "decode trade frame", "book apply (on_update)",
                 "bar update (on_trade, 4 tf)", "decode + book per depth frame", "decode + bars per trade frame",
                 "pipeline amortised per depth frame"):
        if name in f:
            v = f[name]
            p99 = "" if math.isnan(v["p99_us"]) else f", p99 {us(v['p99_us'])}"
            t.add("ingest", name, f"median {us(v['median_us'])}{p99} (n={v['n']})")
    tc = f["target check"]
    t.add("ingest", "decode + book + bars per depth frame (sum of medians)", us(tc["decode+book+bars_median_us"]),
          f"<= {T_INGEST_US:g} µs", bool(tc["met"]))


def sec_loopback(t: Table, repeat: int) -> None:
    from benchmarks import bench_loopback
    from daemon.venue.replay import ReplaySource
    src0 = ReplaySource(REC, speed=0)
    rec_rate = len(src0.frames) / ((src0.frames[-1].recv_ns - src0.frames[0].recv_ns) / 1e9)  # live market's rate
    rates = []
    for _ in range(repeat):
        n, dt = asyncio.run(bench_loopback.feed_run(ReplaySource(REC, speed=0)))
        rates.append(n / dt)
    t.data["loopback"] = {"frames_per_s": rates}
    med = statistics.median(rates)
    t.add("loopback", "venue -> websocket -> BinanceFeed (decode+book), frames/s",
          f"median {med:,.0f}/s over {repeat} runs ({med / rec_rate:,.0f}x the recorded rate)",
          ">= 10x recorded", med >= 10 * rec_rate)


# ------------------------------------------------------------------------------------------------ peers
def ensure_peer_venv(t: Table) -> Path | None:
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, capture_output=True)
        except (subprocess.CalledProcessError, OSError) as e:
            t.data.setdefault("peer_errors", []).append(f"venv: {e}")
            return None
    for pkg in PEER_PKGS:
        mod = "nautilus_trader" if pkg == "nautilus-trader" else pkg
        ok = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode == 0
        if not ok:
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", pkg], capture_output=True, text=True)
            if r.returncode != 0:
                t.data.setdefault("peer_errors", []).append(
                    f"pip install {pkg}: exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return py


def tradingd_same_frames(repeat: int) -> dict[str, Any]:
    """tradingd on exactly the peers' frames: decode_frame + OrderBook.on_update, and on_update pre-decoded."""
    from benchmarks.peers import fig, load_frames
    from daemon.binance.codec import decode_frame
    from market.book import OrderBook
    from market.events import DepthSnapshot
    snap, frames = load_frames(REC)
    s = DepthSnapshot(SYM, int(snap["lastUpdateId"]), tuple((float(p), float(q)) for p, q in snap["bids"]),
                      tuple((float(p), float(q)) for p, q in snap["asks"]), frames[0][0])
    pre = [decode_frame(raw, ns) for ns, raw in frames]
    clock = time.perf_counter_ns
    full, only = [], []
    book = None
    for _ in range(repeat):
        book = OrderBook(SYM)
        book.on_snapshot(s)
        upd = book.on_update
        for ns, raw in frames:
            t0 = clock()
            upd(decode_frame(raw, ns))
            full.append(clock() - t0)
        b2 = OrderBook(SYM)
        b2.on_snapshot(s)
        upd2 = b2.on_update
        for ev in pre:
            t0 = clock()
            upd2(ev)
            only.append(clock() - t0)
    return {"rows": {"decode+book": fig(full), "book only": fig(only)}, "best_bid": book.best_bid()[0],
            "best_ask": book.best_ask()[0], "last_update_id": book.last_update_id, "frames": len(frames),
            "tradeable": book.is_tradeable}


def sec_peers(t: Table, repeat: int) -> None:
    ours = tradingd_same_frames(repeat)
    t.data["peers"] = {"tradingd": ours}
    td_full, td_only = ours["rows"]["decode+book"], ours["rows"]["book only"]
    t.add("peers", f"tradingd decode+book, {ours['frames']} depth frames after snapshot",
          f"median {us(td_full['median_us'])}, p99 {us(td_full['p99_us'])}")
    t.add("peers", "tradingd book only (on_update, pre-decoded)",
          f"median {us(td_only['median_us'])}, p99 {us(td_only['p99_us'])}")
    py = ensure_peer_venv(t)
    errs = t.data.get("peer_errors", [])
    if py is None:
        for p in ("cryptofeed", "nautilus"):
            t.missing("peers", p, f"peer venv could not be created: {errs}")
        return
    r = subprocess.run([str(py), str(ROOT / "benchmarks" / "peers.py"), "--repeat", str(repeat)],
                       capture_output=True, text=True, timeout=900)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        for p in ("cryptofeed", "nautilus"):
            t.missing("peers", p, f"peers.py failed (exit {r.returncode}): {why}; install errors: {errs}")
        return
    t.data["peers"].update(res)
    for peer, label in (("cryptofeed", "cryptofeed"), ("nautilus", "NautilusTrader")):
        p = res.get(peer)
        if not p:
            continue
        if "error" in p:
            t.missing("peers", label, f"{p['error']} (install: {errs})")
            continue
        agree = (abs(p["best_bid"] - ours["best_bid"]) < 1e-6 and abs(p["best_ask"] - ours["best_ask"]) < 1e-6
                 and p["last_update_id"] == ours["last_update_id"])
        for name, v in p["rows"].items():
            mine = td_full if name.startswith("decode") else td_only
            ratio = mine["median_us"] / v["median_us"]
            gate = peer == "cryptofeed"  # the target is against cryptofeed's book handling
            t.add("peers", f"{label} {p['version']}: {name}",
                  f"median {us(v['median_us'])}, p99 {us(v['p99_us'])}; tradingd ÷ peer = "
                  f"{ratio:.2f} (median), {mine['p99_us'] / v['p99_us']:.2f} (p99)",
                  f"ratio <= {T_PEER_RATIO:g}" if gate else "", ratio <= T_PEER_RATIO if gate else None)
        t.add("peers", f"{label}: final book equals tradingd's", f"{'yes' if agree else 'NO'} (best "
              f"{p['best_bid']}/{p['best_ask']} vs {ours['best_bid']}/{ours['best_ask']}, update id "
              f"{p['last_update_id']})", "equal", agree)


# ------------------------------------------------------------------------------------------------ models
def train_registry(t: Table, root: Path, k1m) -> Any:
    """Small real models per timeframe (train_and_publish) unless ``root`` already has them all."""
    from engines.registry import ModelRegistry
    from engines.train import TrainSpec, missing_models, train_and_publish
    reg = ModelRegistry(root)
    todo = missing_models(reg, TFS)
    days = {"1m": 14, "5m": 45, "15m": 90, "1h": 90}
    secs = {}
    for tf in todo:
        k = k1m[len(k1m) - days[tf] * 1440:]
        spec = TrainSpec(tf, xgb_rounds=200, xgb_early_stopping=20, lstm_epochs=1, lstm_hidden=32,
                         lstm_seq_len=32, threads=2)
        t0 = time.perf_counter()
        out, _ = train_and_publish(k, spec, reg)
        secs[tf] = time.perf_counter() - t0
    t.data["models"] = {"registry": str(root), "trained": secs, "reused": [tf for tf in TFS if tf not in todo]}
    t.add("models", "small XGBoost+LSTM per timeframe (real klines)",
          f"trained {', '.join(f'{k} {v:.0f}s' for k, v in secs.items()) or 'none'}; reused "
          f"{', '.join(t.data['models']['reused']) or 'none'}; registry {root}")
    return reg


def load_sets(reg):
    from daemon.config import Config
    from daemon.engineset import load_engine_sets
    from daemon.config import replace
    cfg = replace(Config(), engines={"xgb_backend": "compiled-cpu", "lstm_backend": "onnxruntime-cpu"})
    return cfg, load_engine_sets(reg, TFS, cfg.engines)


def sec_barclose(t: Table, sets: dict, k1m) -> None:
    """Replay the last 20 days of 1m klines: aggregate, features, both models; time each bar close."""
    from daemon.pipeline import MinuteAggregator
    from engines.data import klines_to_bars
    from engines.features import IncrementalFeatures
    bars = klines_to_bars(k1m[len(k1m) - 20 * 1440:])
    warm = 8 * 1440  # feature + LSTM windows warm on every timeframe before timing
    agg = MinuteAggregator(SYM, TFS)
    feats = {tf: IncrementalFeatures(tf) for tf in TFS}
    per_tf: dict[str, list[int]] = {tf: [] for tf in TFS}
    step4: list[int] = []
    clock = time.perf_counter_ns
    for i, b in enumerate(bars):
        t0 = clock()
        closed = [b] + agg.add(b)
        for bar in closed:
            t1 = clock()
            row = feats[bar.timeframe].update(bar)
            if row is not None:
                if i < warm:
                    sets[bar.timeframe].observe(row, SYM)
                else:
                    p = sets[bar.timeframe].predict(row, SYM)
                    if i >= warm and len(p) == 2:
                        per_tf[bar.timeframe].append(clock() - t1)
        if i >= warm and len(closed) == 4:
            step4.append(clock() - t0)
    t.data["barclose"] = {tf: {"p50_us": pct(v, 50), "p99_us": pct(v, 99), "n": len(v)} for tf, v in per_tf.items()
                          if v}
    for tf in TFS:
        v = per_tf[tf]
        if v:
            t.add("barclose", f"{tf} bar close: features + XGBoost + LSTM",
                  f"p50 {us(pct(v, 50))}, p99 {us(pct(v, 99))} (n={len(v)})")
    if step4:
        t.data["barclose"]["all4"] = {"p50_us": pct(step4, 50), "p99_us": pct(step4, 99), "n": len(step4)}
        t.add("barclose", "hour boundary: all 4 timeframes close (8 inferences)",
              f"p50 {us(pct(step4, 50))}, p99 {us(pct(step4, 99))} (n={len(step4)})",
              f"p99 <= {T_BARCLOSE_P99_US / 1000:g} ms", pct(step4, 99) <= T_BARCLOSE_P99_US)
    info = next(iter(sets.values())).info()
    t.add("barclose", "backends used", ", ".join(f"{k}={v['backend']}" for k, v in info.items()))


def sec_backends(t: Table, reg, k1m, iters: int) -> None:
    import tempfile

    from benchmarks import bench_lstm, bench_xgb
    from engines.backends import EXTRA_BACKENDS, LSTM_PREFERENCE, create_engine, probe
    from engines.features import batch_features
    from engines.lstm_model import make_sequences
    tf = "1m"
    k = k1m[len(k1m) - 3 * 1440:]
    X = batch_features(k, tf)
    Xte = X[np.isfinite(X).all(axis=1)].astype(np.float32)
    xdir = reg.current(tf, "xgboost")
    cache = Path(tempfile.mkdtemp(prefix="bench_cc_"))
    rows = quiet(bench_xgb.bench_engines, xdir, Xte, iters, cache, f"{tf} registry model")
    t.data["backends_xgb"] = rows
    ref = {r["backend"]: r for r in rows}
    base = ref.get("native-cpu (nthread=1)")
    for r in rows:
        ratio = ""
        if base is not None and r is not base:
            ratio = f"; ÷ stock inplace_predict = {r['single_med_us'] / base['single_med_us']:.2f}"
        t.add("backends", f"XGBoost {r['backend']} ({r['info'].get('trees', '')} trees)".replace(" ( trees)", ""),
              f"1 row p50 {us(r['single_med_us'])} p99 {us(r['single_p99_us'])}; 64 rows p50 "
              f"{us(r['b64_med_us'])}{ratio}; max|err| {r['max_abs_err']:.0e}")
    ldir = reg.current(tf, "lstm")
    seq_len = json.loads((ldir / "lstm.json").read_text())["config"]["seq_len"]
    seqs, _ = make_sequences(X, seq_len)
    x1, x64 = seqs[-1:].copy(), seqs[-64:].copy()
    lrows = {}
    for backend in LSTM_PREFERENCE + EXTRA_BACKENDS["lstm"]:
        ok, why = probe("lstm", backend)
        if not ok:
            lrows[backend] = {"available": False, "reason": why}
            continue
        e = create_engine("lstm", backend)
        e.load(ldir)
        e.warmup(100)
        b1 = bench_lstm.time_calls(e.predict, x1, iters)
        b64 = bench_lstm.time_calls(e.predict, x64, max(50, iters // 10))
        lrows[backend] = {"available": True, "b1_p50_us": pct(b1, 50), "b1_p99_us": pct(b1, 99),
                          "b64_p50_us": pct(b64, 50), "b64_p99_us": pct(b64, 99)}
    t.data["backends_lstm"] = lrows
    eager = lrows.get("torch-cpu", {})
    for b, r in lrows.items():
        if not r["available"]:
            t.add("backends", f"LSTM {b}", f"unavailable: {r['reason']}")
            continue
        ratio = ""
        if eager.get("available") and b != "torch-cpu":
            ratio = f"; ÷ PyTorch eager = {r['b1_p50_us'] / eager['b1_p50_us']:.2f}"
        t.add("backends", f"LSTM {b}" + (" (PyTorch eager, peer)" if b == "torch-cpu" else ""),
              f"1 window p50 {us(r['b1_p50_us'])} p99 {us(r['b1_p99_us'])}; 64 p50 {us(r['b64_p50_us'])}{ratio}")
    shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ tick-to-decision
def build_pipeline(cfg, sets, tmp: Path, books, keep: int | None = 2000):
    from market.filters import SymbolFilters
    from daemon.broker import PaperBroker
    from daemon.pipeline import TradingPipeline
    from daemon.store import SQLiteStore
    from daemon.storewriter import BarsAfterEvent, StoreWriter
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    filters = {SYM: SymbolFilters(SYM, 0.01, 0.00001, 0.00001, 9000.0, 5.0)}
    path = tmp / "bench-store.sqlite"
    store = SQLiteStore(path)
    # as daemon/app.py: commits (executions, bars) on the store's writer thread, reads on this one
    writer = StoreWriter(lambda: SQLiteStore(path))
    broker = PaperBroker(cfg.broker, store, symbols=(SYM,), filters=filters, writer=writer)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=cfg.broker.taker_fee,
                                timeframes=TFS, starting_equity=cfg.broker.starting_cash)
    risk = RiskManager(cfg.risk, filters)
    # keep=2000 decisions, as daemon/app.py keeps them
    return TradingPipeline(cfg, [SYM], sets, opt, risk, broker, store=store, books=books, timeframes=TFS,
                           keep=keep, bar_sink=BarsAfterEvent(writer)), store, writer


def history_for(k1m, first_ns: int, first_price: float, n_min: int):
    """The last ``n_min`` real 1m klines, moved in time to end where the recording starts and scaled to its
    price level (features are returns-based; this warms every timeframe's features and LSTM window)."""
    import msgspec

    from engines.data import klines_to_bars
    bars = klines_to_bars(k1m[len(k1m) - n_min:])
    end = first_ns // 60_000_000_000 * 60_000_000_000
    shift = end - (bars[-1].open_ns + 60_000_000_000)
    s = first_price / bars[-1].close
    return [msgspec.structs.replace(b, open_ns=b.open_ns + shift, open=b.open * s, high=b.high * s,
                                    low=b.low * s, close=b.close * s) for b in bars]


async def replay_through_pipeline(cfg, sets, k1m, speed: float, tmp: Path, passes: int = 1) -> dict[str, Any]:
    """The recording through venue -> websocket -> feed -> book -> pipeline, ``passes`` times (each pass's event
    times 12 minutes after the previous one's, so bars keep closing: more bar-close samples)."""
    import msgspec

    from market.events import Trade
    from daemon.config import FeedConfig
    from daemon.binance.feed import BinanceFeed
    from daemon.pipeline import history_bars_needed
    from daemon.venue.replay import ReplaySource
    from daemon.venue.server import LocalVenue
    src = ReplaySource(REC, speed=speed)
    first = next(f for f in src.frames if f.kind == "trade")
    first_price = float(json.loads(first.combined)["data"]["p"])
    books: dict = {}
    pipe, store, writer = build_pipeline(cfg, sets, tmp, books)
    need = history_bars_needed(TFS, extra_bars=40)
    pipe.prime(SYM, history_for(k1m, first.recv_ns, first_price, need))
    errors: list[str] = []
    shift = 0
    span = 12 * 60 * 1_000_000_000  # the recording spans < 11 minutes

    # per decision: (latency, wall and this thread's CPU time inside pipe.on_event, bars closed by the tick);
    # wall - CPU is time off the CPU (GIL, scheduler) during the decision, latency - wall is decode + book
    why: list[tuple[int, int, int, int]] = []

    def on_event(ev) -> None:
        try:
            if shift and type(ev) is Trade:
                ev = msgspec.structs.replace(ev, ts_event=ev.ts_event + shift)  # ts_recv is already "now"
            n0, b0 = len(pipe.latencies_ns), pipe.counters["bars"]
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            pipe.on_event(ev, feed.books.get(getattr(ev, "symbol", SYM)))
            if len(pipe.latencies_ns) != n0:
                why.append((pipe.latencies_ns[-1], time.perf_counter_ns() - w0, time.thread_time_ns() - c0,
                            pipe.counters["bars"] - b0))
        except Exception as e:  # noqa: BLE001 - reported in the row, never hidden
            errors.append(f"{type(e).__name__}: {e}")

    wall = 0.0
    for k in range(passes):
        shift = k * span
        if k:
            src.rewind()
        async with LocalVenue(src) as venue:
            feed = BinanceFeed([SYM], venue.ws_url, venue.rest_url, FeedConfig(), on_event)
            books.update(feed.books)
            task = asyncio.create_task(feed.run())
            # no wall-clock on_time ticker here: the recording's event times are from 2024, a "now" clock would
            # close every bar at once; bars close on the replayed trades (the event clock), as in replay mode
            t0 = time.perf_counter()
            await venue.done.wait()
            wall += time.perf_counter() - t0
            await asyncio.sleep(0.5)
            feed.stop()
            await task
    writer.close()
    store.close()
    return {"latency": pipe.latency_summary(), "store_write": pipe.store_write_summary(),
            "writer": writer.snapshot(), "lat_ns": list(pipe.latencies_ns), "counters": dict(pipe.counters),
            "wall_s": wall, "passes": passes, "errors": errors[:5], "n_errors": len(errors), "feed": feed.counters(),
            "why": why, "cpu_affinity": sorted(os.sched_getaffinity(0))}


def sec_tick(t: Table, cfg, sets, k1m, speed: float, passes: int = 3) -> None:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_tick_") as tmp:
        r = asyncio.run(replay_through_pipeline(cfg, sets, k1m, speed, Path(tmp), passes))
    t.data["tick"] = {k: v for k, v in r.items() if k not in ("lat_ns", "why")}
    t.data["tick"]["decisions"] = [{"latency_us": a / 1e3, "wall_us": b / 1e3, "cpu_us": c / 1e3, "bars_closed": n}
                                   for a, b, c, n in r["why"]]
    t.data["tick"]["lat_us_sorted"] = sorted(round(x / 1e3, 1) for x in r["lat_ns"])
    lat = r["latency"]
    if r["n_errors"]:
        t.add("tick", "pipeline errors during replay", f"{r['n_errors']}: {r['errors']}", "0", False)
    if not lat.get("n"):
        t.missing("tick", f"tick-to-decision at {speed:g}x replay", f"no bar-close decision happened "
                  f"(counters {dict(r['counters'])})", f"p99 <= {T_TICK_P99_MS:g} ms")
        return
    t.add("tick", f"tick-to-decision, venue replay at {speed:g}x ({r['passes']} passes, {r['wall_s']:.0f} s)",
          f"p50 {us(lat['p50_us'])}, p99 {us(lat['p99_us'])}, max {us(lat['max_us'])} (n={lat['n']} bar-close "
          f"decisions; {r['counters'].get('orders', 0)} orders)", f"p99 <= {T_TICK_P99_MS:g} ms",
          lat["p99_us"] <= T_TICK_P99_MS * 1000)
    why = r["why"]
    if why:
        off = np.array([(b - c) / 1e3 for _, b, c, _ in why])
        aff = r["cpu_affinity"]
        pinned = f", pinned to CPU {','.join(map(str, aff))}" if len(aff) < (os.cpu_count() or 1) else ", not pinned"
        t.add("tick", "  of which: off the CPU inside the decision (wall - thread CPU time)",
              f"p50 {us(float(np.percentile(off, 50)))}, max {us(float(off.max()))} (n={len(why)}{pinned})")
        by: dict[int, list[float]] = {}
        for a, _, _, n in why:
            by.setdefault(n, []).append(a / 1e3)
        t.add("tick", "  latency by bars closed on the tick (4 = 1m+5m+15m+1h at an hour)",
              "; ".join(f"{n}: p50 {us(float(np.percentile(v, 50)))}, max {us(max(v))} (n={len(v)})"
                        for n, v in sorted(by.items())))
    sw = r["store_write"]
    if sw.get("n"):
        t.add("tick", "  of which: bar hand-off to the store's writer thread (inside the decision path)",
              f"p50 {sw['p50_ms'] * 1000:,.1f} µs, max {sw['max_ms'] * 1000:,.1f} µs (n={sw['n']})")
    lag = r["writer"]["lag"]
    if lag.get("n"):
        t.add("tick", "  store writer thread: submit -> durable commit (off the loop)",
              f"p50 {lag['p50_ms']:,.2f} ms, p99 {lag['p99_ms']:,.2f} ms (n={lag['n']}; "
              f"{r['writer']['dropped']} dropped, {r['writer']['errors']} errors)")


# ------------------------------------------------------------------------------------------------ backtest
def sec_backtest(t: Table, extra: str = "", timeout_s: float = 900.0) -> None:
    if not (ROOT / "daemon" / "backtest" / "cli.py").exists():
        t.missing("backtest", "tradingd backtest, 90-day BTC 1m klines", "daemon/backtest/cli.py missing")
        return
    import shlex
    import tempfile
    exe = str(Path(sys.executable).parent / "tradingd")
    exe = exe if os.path.exists(exe) else (shutil.which("tradingd") or exe)
    with tempfile.TemporaryDirectory(prefix="bench_bt_") as tmp:
        cmd = [exe, "backtest", "--data", str(KLINES), "--report", str(Path(tmp) / "report")] + shlex.split(extra)
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            t.missing("backtest", "tradingd backtest, 90-day BTC 1m klines", f"still running after {timeout_s:g} s "
                      f"(--backtest-timeout); killed")
            return
        wall = time.perf_counter() - t0
        summary = {}
        mj = Path(tmp) / "report" / "metrics.json"
        if mj.exists():
            summary = {"report_bytes": mj.stat().st_size}
    t.data["backtest"] = {"cmd": cmd, "rc": r.returncode, "wall_s": wall, "stderr_tail": r.stderr[-2000:], **summary}
    if r.returncode != 0:
        t.missing("backtest", "tradingd backtest, 90-day BTC 1m klines",
                  f"exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:200]}")
        return
    t.add("backtest", "tradingd backtest, 90-day BTC 1m klines (wall)",
          f"{wall:,.1f} s (walk-forward training included; args: {extra or 'defaults'})",
          f"<= {T_BACKTEST_S:g} s", wall <= T_BACKTEST_S)


# ------------------------------------------------------------------------------------------------ soak
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Mallinfo2(__import__("ctypes").Structure):
    _fields_ = [(n, __import__("ctypes").c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_LIBS: dict[str, Any] = {}


def _lib(name: str | None, fn: str, restype: Any) -> Any:
    """A C function, looked up once: a ctypes.CDLL per call builds a new function-pointer class each time
    (allocation the soak would count)."""
    key = f"{name}:{fn}"
    if key not in _LIBS:
        import ctypes
        try:
            f = getattr(ctypes.CDLL(name), fn)
            f.restype = restype
            _LIBS[key] = f
        except (OSError, AttributeError):
            _LIBS[key] = None
    return _LIBS[key]


def mem_breakdown() -> dict[str, float]:
    """Where the resident memory is, in MB, to tell a leak from caches and allocator retention: ``malloc_used``
    (glibc bytes handed out and not freed: heap + mmapped chunks; numpy, ONNX Runtime, SQLite all allocate
    here), ``sqlite`` (SQLite's own heap, page caches included: the same libsqlite3 Python's module loaded),
    ``py_blocks`` (live pymalloc blocks, thousands: Python objects). RSS - malloc_used is freed memory the
    allocator keeps plus code and pymalloc arenas. Keys are missing where the library is not there."""
    import ctypes
    out: dict[str, float] = {}
    mallinfo2 = _lib(None, "mallinfo2", _Mallinfo2)
    if mallinfo2 is not None:
        mi = mallinfo2()
        out["malloc_used"] = (mi.uordblks + mi.hblkhd) / 2**20
        out["malloc_free_kept"] = mi.fordblks / 2**20
    used = _lib("libsqlite3.so.0", "sqlite3_memory_used", ctypes.c_int64)
    if used is not None:
        out["sqlite"] = used() / 2**20
    out["py_blocks_k"] = sys.getallocatedblocks() / 1e3
    return out


def _slope_per_h(ts: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.array(ts) / 3600.0, ys, 1)[0]) if len(ts) >= 3 else float("nan")


class _Rows:
    """Float rows in a preallocated array: the soak's own records must not allocate per sample, or the
    harness's growth (~0.5 KB of tuples/floats/dicts per pass, ~0.9 MB/h) is measured as the daemon's."""

    def __init__(self, cap: int, width: int) -> None:
        self.a = np.full((max(16, cap), width), np.nan)
        self.n = 0

    def add(self, *vals: float) -> None:
        if self.n == len(self.a):  # only when the estimate was short: doubling, rare
            self.a = np.concatenate([self.a, np.full_like(self.a, np.nan)])
        self.a[self.n, :len(vals)] = vals
        self.n += 1

    def col(self, j: int) -> np.ndarray:
        return self.a[:self.n, j]


def sec_soak(t: Table, minutes: float, cfg=None, sets=None, k1m=None) -> None:
    import tempfile

    import msgspec

    from market.bars import BarBuilder
    from daemon.config import FeedConfig
    from market.events import Trade
    from daemon.binance.feed import BinanceFeed
    from daemon.venue.replay import ReplaySource
    from daemon.venue.server import LocalVenue

    samples = _Rows(int(minutes * 30) + 16, 2)   # (t, RSS) every 2 s
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.add(time.monotonic() - t0, rss_mb())
            stop.wait(2.0)

    tmp = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    books: dict = {}
    pipe = None
    if cfg is not None and sets is not None:
        pipe, _, _ = build_pipeline(cfg, sets, tmp, books)
    bars = BarBuilder(SYM, TFS)
    frames = 0
    loops = 0
    span = 0

    src = ReplaySource(REC, speed=0)  # parsed once, rewound per pass (the daemon never re-parses a recording)

    async def one(shift_ns: int) -> None:
        nonlocal frames
        if loops:
            src.rewind()

        def on_event(ev) -> None:
            if type(ev) is Trade:   # the clock moves on: each pass is a later copy of the recording
                ev = msgspec.structs.replace(ev, ts_event=ev.ts_event + shift_ns, ts_recv=ev.ts_recv + shift_ns)
                if pipe is not None:
                    pipe.on_trade(ev, feed.books[SYM])
                else:
                    bars.on_trade(ev)

        async with LocalVenue(src) as venue:
            feed = BinanceFeed([SYM], venue.ws_url, venue.rest_url, FeedConfig(), on_event,
                               extra_streams=("bookTicker",))
            books.update(feed.books)
            task = asyncio.create_task(feed.run())
            await venue.done.wait()
            t_end = time.monotonic() + 30
            while sum(feed.stats.frames.values()) < len(src.frames) - 2 and time.monotonic() < t_end:
                await asyncio.sleep(0.01)
            frames += sum(feed.stats.frames.values())
            feed.stop()
            await task

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    deadline = time.monotonic() + minutes * 60
    span = 12 * 60 * 1_000_000_000  # the recording spans < 11 min; each pass starts 12 min later
    import gc
    t_start = time.monotonic()
    keys = tuple(mem_breakdown())
    # after each pass, garbage collected: (t, RSS) (the leak signal) + where it is (mem_breakdown), preallocated
    # for a pass every 0.5 s (they take ~2 s)
    passes = _Rows(int(minutes * 120) + 16, 2 + len(keys))
    while time.monotonic() < deadline:
        asyncio.run(one(loops * span))
        loops += 1
        gc.collect()
        mem = mem_breakdown()
        passes.add(time.monotonic() - t_start, rss_mb(), *(mem.get(k, math.nan) for k in keys))
        # one line per pass, so a soak cut short still leaves its curve in the log
        print(f"[soak] pass {loops} t={passes.col(0)[-1]:.0f}s rss={passes.col(1)[-1]:.1f}MB "
              + " ".join(f"{k}={v:.1f}" for k, v in mem.items()), file=sys.stderr, flush=True)
    stop.set()
    th.join()
    pt, prss = passes.col(0), passes.col(1)
    mb = np.concatenate([samples.col(1), prss])
    # the allocator keeps freed arenas for ~15-20 passes and the decisions deque fills to its 2000 bound over the
    # first ~140 passes: the slope is fitted on the second half of the run (steady state), not the warm-up
    h = loops // 2
    fit_t = pt[h:]
    slope = _slope_per_h(fit_t, prss[h:])
    mem_slopes = {k: _slope_per_h(fit_t, passes.col(2 + j)[h:]) for j, k in enumerate(keys)}
    pass_end = list(zip(pt.tolist(), prss.tolist()))
    pass_mem = [dict(zip(keys, r)) for r in passes.a[:loops, 2:].tolist()]
    t.data["soak"] = {"minutes": minutes, "loops": loops, "frames": frames,
                      "samples": samples.a[:samples.n].tolist(),
                      "pass_end": pass_end, "pass_mem": pass_mem, "pipeline": pipe is not None,
                      "slope_mb_per_h": slope, "mem_slopes_per_h": mem_slopes}
    t.add("soak", f"RSS, {minutes:g} min replay loop: {loops} passes, {frames:,} frames"
          f"{', pipeline' if pipe is not None else ', bars only'}",
          f"start {samples.col(1)[0]:.0f} MB, after pass 1 {pass_end[0][1]:.0f} MB, end {pass_end[-1][1]:.0f} MB, "
          f"max {mb.max():.0f} MB; growth {slope:+.1f} MB/h (line through post-GC RSS after passes "
          f"{h + 1}..{loops}, the second half)",
          f"<= {T_SOAK_MB_H:g} MB/h", slope <= T_SOAK_MB_H if math.isfinite(slope) else None)
    t.add("soak", "RSS maximum during the soak", f"{mb.max():.0f} MB", f"<= {T_RSS_MB:g} MB",
          bool(mb.max() <= T_RSS_MB))
    if pass_mem:
        a, b = pass_mem[0], pass_mem[-1]
        names = {"malloc_used": "malloc in use", "malloc_free_kept": "malloc freed+kept", "sqlite": "SQLite heap",
                 "py_blocks_k": "pymalloc blocks (k)"}
        t.add("soak", "  where it is (after pass 1 -> end; slope over the second half)",
              "; ".join(f"{names[k]} {a[k]:.1f} -> {b[k]:.1f} ({mem_slopes[k]:+.2f}/h)" for k in names if k in a))
    shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ main
def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON output (default ./bench.json)")
    ap.add_argument("--soak", type=float, default=0.0, help="minutes of replay-loop RSS soak (0: skip)")
    ap.add_argument("--fault-soak", type=float, default=0.0, help="minutes of the fault soak against the simulator "
                    "with every fault kind on (benchmarks/bench_fault_soak.py; 0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="passes over the recording for per-frame figures")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per inference backend")
    ap.add_argument("--speed", type=float, default=10.0, help="replay speed for tick-to-decision")
    ap.add_argument("--tick-passes", type=int, default=3, help="passes over the recording for tick-to-decision")
    ap.add_argument("--cpu", default="", help="pin the benchmark process to these CPUs (e.g. 1 or 2,3), as a "
                    "latency-sensitive deployment would (systemd CPUAffinity=); forked children (the backtest's "
                    "training) inherit it; default: not pinned")
    ap.add_argument("--registry", type=Path, default=Path("/tmp/tradingd-bench-registry"),
                    help="model registry to reuse or train small models into")
    ap.add_argument("--backtest-args", default="", help="extra arguments for `tradingd backtest`")
    ap.add_argument("--backtest-timeout", type=float, default=900.0, help="seconds before the backtest is killed")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    a = ap.parse_args(argv)
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.disable(logging.WARNING)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.cpu:
        os.sched_setaffinity(0, {int(c) for c in a.cpu.split(",")})
    bad = skip - set(SECTIONS)
    if bad:
        ap.error(f"unknown sections {sorted(bad)}")
    t = Table()
    t.data["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                         "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                         "affinity": sorted(os.sched_getaffinity(0))}
    have_rec = all(p.exists() for p in REC)
    have_k = KLINES.exists()
    state: dict[str, Any] = {}

    def section(name: str, fn: Callable[[], None], needs: bool = True, why: str = "") -> None:
        if name in skip:
            return
        if not needs:
            t.missing(name, name, why)
            return
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failed section is a row with its error
            t.missing(name, name, f"{type(e).__name__}: {e}")
            t.data.setdefault("errors", {})[name] = traceback.format_exc()
        t.data.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)

    section("ingest", lambda: sec_ingest(t, a.repeat), have_rec, "recording missing")
    section("loopback", lambda: sec_loopback(t, a.repeat), have_rec, "recording missing")
    section("peers", lambda: sec_peers(t, a.repeat), have_rec, "recording missing")

    def models() -> None:
        from engines.data import load_klines_csv
        state["k1m"] = load_klines_csv(KLINES, symbol=SYM)
        state["reg"] = train_registry(t, a.registry, state["k1m"])
        state["cfg"], state["sets"] = load_sets(state["reg"])

    need_models = bool({"barclose", "backends", "tick"} - skip) or (a.soak > 0 and "soak" not in skip)
    if need_models:
        section("models", models, have_k, "klines missing")
    ok = "sets" in state
    section("barclose", lambda: sec_barclose(t, state["sets"], state["k1m"]), ok, "no models")
    section("backends", lambda: sec_backends(t, state["reg"], state["k1m"], a.iters), ok, "no models")
    pipeline_ok = (ROOT / "daemon" / "pipeline.py").exists()
    if "tick" not in skip:
        if not pipeline_ok:
            t.missing("tick", "tick-to-decision", "pipeline missing", f"p99 <= {T_TICK_P99_MS:g} ms")
        else:
            # fresh engine sets: the bar-close section filled the LSTM windows with another time's rows
            def tick() -> None:
                cfg, sets = load_sets(state["reg"])
                sec_tick(t, cfg, sets, state["k1m"], a.speed, a.tick_passes)
            section("tick", tick, ok and have_rec, "no models or recording")
    section("backtest", lambda: sec_backtest(t, a.backtest_args, a.backtest_timeout), have_k, "klines missing")
    if a.soak > 0:
        def soak() -> None:
            if pipeline_ok and ok:
                cfg, sets = load_sets(state["reg"])
                sec_soak(t, a.soak, cfg, sets, state["k1m"])
            else:
                sec_soak(t, a.soak)
        section("soak", soak, have_rec, "recording missing")
    elif "soak" not in skip:
        t.missing("soak", "RSS growth over a long replay", "--soak MINUTES not given", f"<= {T_SOAK_MB_H:g} MB/h")
    if a.fault_soak > 0:
        def fault_soak() -> None:
            from benchmarks import bench_fault_soak
            args = ["--minutes", str(a.fault_soak)] + (["--registry", str(a.registry)] if ok else [])
            r = t.data["fault_soak"] = bench_fault_soak.run(args)
            t.add("faultsoak", f"{a.fault_soak:g} min simulator, every fault on: bars closed / decisions",
                  f"{r['bars_closed']} / {r['decisions']}")
            t.add("faultsoak", "  refused / forged; resyncs / gaps; reconnects / closes",
                  f"{sum(r['refused_by_reason'].values())} / {sum(r['forged_by_kind'].values())}; "
                  f"{r['resyncs']} / {r['gaps']}; {r['reconnects']} / {r['venue_closes']}")
            t.add("faultsoak", "  orders on an unsynced book; RSS start -> end (max)",
                  f"{r['orders_on_unsynced_book']}; {r['rss_mb']['start']:.0f} -> {r['rss_mb']['end']:.0f} "
                  f"({r['rss_mb']['max']:.0f}) MB", "0 orders", r["orders_on_unsynced_book"] == 0)
        section("faultsoak", fault_soak)

    print()
    print(f"tradingd performance suite — {t.data['machine']['cpu']}, {t.data['machine']['cpus']} CPUs "
          f"(load avg {', '.join(f'{x:.1f}' for x in t.data['machine']['load_avg'])}), Python "
          f"{t.data['machine']['python']}")
    t.print()
    missed = [r for r in t.rows if r["met"] is False]
    print(f"\n{sum(r['met'] is True for r in t.rows)} targets met, {len(missed)} missed, "
          f"{sum(r['value'].startswith('not measured') for r in t.rows)} rows not measured")
    result = {"rows": t.rows, "data": t.data}
    a.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"JSON: {a.out}")
    return result


def main() -> int:
    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
