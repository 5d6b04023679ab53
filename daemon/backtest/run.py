"""``tradingd backtest``: the live pipeline (bars -> features -> engines -> DollarProfitOptimizer -> risk ->
paper broker, :class:`daemon.pipeline.TradingPipeline`) driven by a simulated clock over 1m klines, walk-forward.

Why it is built this way:

* Walk-forward (no look-ahead): the run is cut into test windows (``--test-days``); the models that trade a
  window are trained (engines/train.py ``train_timeframe``, fast settings) on the ``--train-days`` of 1m klines
  that END where the window starts. A window's model never sees a bar it trades; :func:`run_backtest` checks
  each trained model's data window against its test window and refuses otherwise.
* Warm start (default; ``--no-warm-start`` trains every window from scratch, as before): window 1 is trained
  from scratch; each later window continues the previous window's models (``train_timeframe_warm``: XGBoost
  adds up to ``--xgb-warm-rounds`` trees on this window's training rows, the LSTM is fine-tuned
  ``--lstm-warm-epochs`` on the windows it has not fitted yet). The previous models only saw data before the
  previous test window, so before this one; the recorded data windows are checked. It changes the models and
  hence the results (reported in metrics.json ``info.windows[*].timeframes[*].warm_start_from_end_ns``); it
  roughly halves training time.
* Two cores, three jobs: training streams window by window from a forked process (:class:`_TrainStream`) and
  the strategy simulates right behind it (a decision at ``ts`` waits until the predictions for every bar closing
  by ``ts`` exist, so it decides on exactly what a serial run would: tested); the momentum baseline, which needs
  no model, runs in another fork meanwhile. ``--serial`` (or a process that already loaded torch/XGBoost, whose
  OpenMP pools do not survive a fork) runs everything here, in order. Training uses 1 thread per library
  (``--threads``): on a small shared box 2-thread OpenMP/torch pools were 5-10x slower for these small models.
* Batched inference: features are computed once per timeframe over the whole series (``batch_features``, causal:
  row i depends on bars <= i only), and each window's rows are predicted in ONE batch per model with the
  deployable engines (compiled XGBoost walker, ONNX Runtime LSTM). The pipeline still computes its own
  incremental features bar by bar; :class:`BatchPredictions` (the pipeline's engine set in backtests) looks the
  precomputed prediction up by the bar being decided and counts any row that differs from the batch row.
* Costs are always on: klines have no order book, so a book is synthesised around each 1m close
  (:class:`SynthBook`: ``--spread-bps`` full spread, ``--levels`` levels every ``--level-bps`` with
  ``--level-notional`` quote each); the paper broker fills market orders against it (spread + depth walked) and
  charges the taker fee. Decisions at a bar close fill on the book around that close.
* Stops/take-profits between bar closes: live, ``optimizer.on_price`` sees every trade. From klines the
  backtest feeds it each 1m bar's path (open, then the adverse extreme, then the favourable one: the
  conservative order) and fills a triggered exit on a book centred at the stop/TP level (or the open when the
  bar gapped through it).
* At the end every open position is closed (``pipeline.flatten``) so trade P&L sums to the equity change.
* Baselines through the same costs: buy-and-hold (one market buy on the synthetic book, marked every bar, one
  sell at the end, same broker and fees) and a no-model momentum baseline (P(up) = 0.5 +/- conviction/2 by the
  sign of the last bar's return, the same pipeline, optimizer, risk and broker).

Over a raw recording (``--recording PATH... --registry DIR [--history CSV]``, :func:`run_recording_backtest`):
the ``<recv_ns> <frame>`` files are replayed through the live path itself (decode_frame -> OrderBook ->
TradingPipeline.on_trade -> paper broker walking the recorded L2 book), on the recording's receive times and as
fast as the CPU goes. A recording is minutes long, far less than the features' warm-up and no training set, so
the models are the registry's CURRENT versions (``EngineSet.load``, as ``tradingd run``) and the feature state is
primed from ``--history`` 1m klines ending before the recording (without it, predictions start after the
warm-up, and the command says so). Equity is marked on the book mid every minute; every fill (bar-close orders,
stop/TP exits, resting or latency-delayed orders) reaches the report through a tap on the broker. Undecodable
frames are counted drops (``counters.replay.decode_dropped.<reason>``), never a crash.

Short files (:func:`fit_windows`): a walk-forward needs ``--train-days`` + ``--test-days`` of data. A shorter
file has both shrunk by the same factor (whole minutes; logged, in metrics.json ``info.windows_rule`` and the
report's warnings) as long as training keeps >= ``MIN_TRAIN_DAYS`` (3) days and the test window >= ``MIN_TEST_DAYS``
(1) day; shorter still, the command exits 2 naming the file and its length. With the defaults (30 + 7) a 30-day
file trains 24.3 days and trades 5.7; a file of 37 days or more runs exactly as before. A run that trades less than
``TRADED_SHARE_WARN`` (10 %) of the data's span (e.g. ``--train-days 30 --test-days 1`` on 31 days) says so in the
log, metrics.json ``info.coverage``/``info.warnings`` and the report.

Symbol: ``--symbol``, else the pair the file name names (``BTC_USDT-1m_...``, ``BTCUSDT-5m.csv.gz``:
``engines.data.symbol_from_name``); a name that names none (``eth.csv``) exits 2 asking for ``--symbol``, and so
does ``--store`` without it. Never a default symbol.

Bad input: ``engines.data.load_klines_csv`` refuses unusable files with an error naming the file and line (the
command prints it and exits 2) and repairs what has one right answer (missing minutes filled as flat
zero-volume bars at the previous close, exact duplicate rows dropped); the counts are in metrics.json ``info``.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from market.events import Bar, OrderIntent, Side, timeframe_ns

log = structlog.get_logger(__name__)

__all__ = ["BacktestOptions", "Window", "WindowRule", "DataTooShort", "fit_windows", "SynthBook", "SymbolRules",
           "BatchPredictions", "MomentumBaseline",
           "walk_forward_windows", "run_backtest", "BacktestResult", "run_recording_backtest", "RecordingResult",
           "OrderRecord", "decision_key", "add_arguments", "main"]

_M = 60_000_000_000
_LSTM_CHUNK = 256
_DAY = 86_400_000_000_000
MIN_TRAIN_DAYS = 3.0      # a short file's windows shrink no further than this (see fit_windows)
MIN_TEST_DAYS = 1.0
TRADED_SHARE_WARN = 0.10  # warn when the test windows cover less than this share of the data's span


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class SymbolRules:
    """Exchange filters for the simulated symbol (BTCUSDT-like defaults); duck-types SymbolFilters."""

    symbol: str = "BTCUSDT"
    tick_size: float = 0.01
    lot_step: float = 0.00001
    min_qty: float = 0.00001
    max_qty: float = 9000.0
    min_notional: float = 5.0


@dataclass(frozen=True)
class BacktestOptions:
    timeframes: tuple[str, ...] = ("1m", "5m", "15m", "1h")
    models: tuple[str, ...] = ("xgboost", "lstm")
    train_days: float = 30.0
    test_days: float = 7.0
    warm_days: float = 1.0          # decisions without predictions before the first window (optimizer metrics)
    xgb_rounds: int = 100
    xgb_early_stopping: int = 20
    lstm_epochs: int = 1
    lstm_hidden: int = 16
    lstm_seq_len: int = 32
    # 1 thread per library: on a small shared box OpenMP/torch pools of 2+ threads trained these small models
    # 5-10x slower (spinning threads fighting for cores); 0 = the libraries' defaults
    threads: int = 1
    seed: int = 0
    # warm start (walk-forward clean: the previous window's models only saw data before the previous window's
    # test start, which is before this one's): XGBoost adds up to xgb_warm_rounds trees on the new window's
    # training rows; the LSTM is fine-tuned lstm_warm_epochs epoch(s) on the windows it has not fitted yet
    warm_start: bool = True
    xgb_warm_rounds: int = 20
    xgb_warm_early_stopping: int = 10
    lstm_warm_epochs: int = 1
    parallel: bool = True           # the momentum baseline runs in a forked process while the models train
    xgb_backend: str = "compiled-cpu"
    lstm_backend: str = "onnxruntime-cpu"
    spread_bps: float = 1.0
    level_bps: float = 0.5
    levels: int = 20
    level_notional: float = 25_000.0
    baseline: bool = True
    baseline_conviction: float = 0.7
    intrabar_exits: bool = True

    def validate(self) -> None:
        for tf in self.timeframes:
            timeframe_ns(tf)
        bad = set(self.models) - {"xgboost", "lstm"}
        if bad or not self.models:
            raise ValueError(f"models must be a subset of xgboost,lstm, got {self.models}")
        if not (round(self.train_days * 1440) >= 1 and round(self.test_days * 1440) >= 1 and self.warm_days >= 0):
            raise ValueError("train_days and test_days must be >= 1 minute, warm_days >= 0")
        if not (self.spread_bps > 0 and self.level_bps > 0 and self.levels >= 1 and self.level_notional > 0):
            raise ValueError("costs are never off: spread_bps, level_bps, level_notional must be > 0, levels >= 1")
        if not 0 <= self.baseline_conviction <= 1:
            raise ValueError("baseline_conviction must be in [0, 1]")
        if self.threads < 0 or self.xgb_warm_rounds < 1 or self.lstm_warm_epochs < 1:
            raise ValueError("threads must be >= 0, xgb_warm_rounds and lstm_warm_epochs >= 1")


# ------------------------------------------------------------------------------------------------ windows
@dataclass(frozen=True)
class Window:
    index: int
    train_start_ns: int
    train_end_ns: int    # exclusive: the training 1m bars open before this
    test_start_ns: int   # == train_end_ns
    test_end_ns: int     # exclusive (decisions at bar closes in (test_start, test_end])


def walk_forward_windows(first_open_ns: int, end_ns: int, train_days: float, test_days: float) -> list[Window]:
    """Rolling windows over [first_open_ns, end_ns): train ``train_days``, trade the next ``test_days``, roll.
    Lengths are whole minutes (decisions are at 1m closes; no float rounding can leave a 1 ns window)."""
    tr, te = round(train_days * 1440) * _M, round(test_days * 1440) * _M
    if tr <= 0 or te <= 0:
        raise ValueError("train_days and test_days must be >= 1 minute")
    out: list[Window] = []
    start = first_open_ns + tr
    while start < end_ns:
        out.append(Window(len(out), start - tr, start, start, min(start + te, end_ns)))
        start += te
    return out


class DataTooShort(ValueError):
    """The data cannot hold even the smallest walk-forward window (the CLI prefixes the file name, exits 2)."""


@dataclass(frozen=True)
class WindowRule:
    """The walk-forward lengths a run uses and why (metrics.json ``info.windows_rule``)."""

    data_days: float
    requested_train_days: float
    requested_test_days: float
    train_days: float
    test_days: float
    adapted: bool
    rule: str = (f"data shorter than train+test: both shrink by the same factor (whole minutes) while train >= "
                 f"{MIN_TRAIN_DAYS:g} d and test >= {MIN_TEST_DAYS:g} d, else refused")


def fit_windows(data_ns: int, train_days: float, test_days: float) -> WindowRule:
    """Fit the requested walk-forward lengths to ``data_ns`` of 1m data (pure). Data of at least train+test days:
    unchanged. Shorter: train and test shrink by the same factor to fill it exactly (one window, the last
    ``test/(train+test)`` of the data traded) unless that leaves train < MIN_TRAIN_DAYS or test < MIN_TEST_DAYS:
    :class:`DataTooShort`. Without this a 30-day file under 30+7 traded its last 9 minutes (Sharpe -413) and a
    file of exactly 30 days traded nothing."""
    data_min = data_ns // _M
    days = data_min / 1440
    req_tr, req_te = round(train_days * 1440), round(test_days * 1440)
    if data_min >= req_tr + req_te:
        return WindowRule(days, train_days, test_days, train_days, test_days, False)
    tr = data_min * req_tr // (req_tr + req_te)
    te = data_min - tr
    if tr < MIN_TRAIN_DAYS * 1440 or te < MIN_TEST_DAYS * 1440:
        need = max(MIN_TRAIN_DAYS * (req_tr + req_te) / req_tr, MIN_TEST_DAYS * (req_tr + req_te) / req_te)
        raise DataTooShort(
            f"{days:.2f} days of 1m data ({data_min} minutes): the walk-forward needs train {train_days:g} + test "
            f"{test_days:g} days, or, shrunk in proportion, at least {need:.2f} days (train >= {MIN_TRAIN_DAYS:g} "
            f"d, test >= {MIN_TEST_DAYS:g} d); give a longer file or smaller --train-days/--test-days")
    return WindowRule(days, train_days, test_days, tr / 1440, te / 1440, True)


# ------------------------------------------------------------------------------------------------ book
class SynthBook:
    """A book around a mid price for klines (no L2 history): ``levels`` levels a side, first at +/- half the
    spread, then every ``level_bps``, ``level_notional`` quote each; prices on the tick grid. Looks like an
    OrderBook to the pipeline and the broker (best_bid/best_ask/depth/is_tradeable)."""

    def __init__(self, rules: SymbolRules, spread_bps: float, level_bps: float, levels: int,
                 level_notional: float) -> None:
        self.rules = rules
        self.half = spread_bps * 1e-4 / 2
        self.step = level_bps * 1e-4
        self.n = levels
        self.notional = level_notional
        self.is_tradeable = True
        self.mid_price = math.nan
        self._bids: list[tuple[float, float]] | None = None
        self._asks: list[tuple[float, float]] | None = None
        self._top = (math.nan, math.nan)
        self._qv = math.nan

    def set_mid(self, mid: float) -> None:
        """Re-centre the book (levels are built lazily: most bars only need the top for the decision)."""
        if mid != self.mid_price:
            self.mid_price = mid
            self._bids = self._asks = None
            t = self.rules.tick_size
            self._top = (round(math.floor(mid * (1 - self.half) / t + 1e-9) * t, 10),
                         round(math.ceil(mid * (1 + self.half) / t - 1e-9) * t, 10))
            lot = self.rules.lot_step
            self._qv = round(max(lot, math.floor(self.notional / mid / lot) * lot), 10)

    def _build(self) -> None:
        mid, t, lot = self.mid_price, self.rules.tick_size, self.rules.lot_step
        q = round(max(lot, math.floor(self.notional / mid / lot) * lot), 10)
        bids, asks = [], []
        for i in range(self.n):
            off = self.half + i * self.step
            b = round(math.floor(mid * (1 - off) / t + 1e-9) * t, 10)
            a = round(math.ceil(mid * (1 + off) / t - 1e-9) * t, 10)
            if bids and b >= bids[-1][0]:
                b = round(bids[-1][0] - t, 10)
            if asks and a <= asks[-1][0]:
                a = round(asks[-1][0] + t, 10)
            bids.append((b, q))
            asks.append((a, q))
        self._bids, self._asks = bids, asks

    def best_bid(self):
        return (self._top[0], self._q()) if self.mid_price == self.mid_price else None

    def best_ask(self):
        return (self._top[1], self._q()) if self.mid_price == self.mid_price else None

    def _q(self) -> float:
        return self._qv

    def mid(self) -> float | None:
        return (self._top[0] + self._top[1]) / 2 if self.mid_price == self.mid_price else None

    def depth(self, n: int):
        if self._bids is None:
            self._build()
        return self._bids[:n], self._asks[:n]


# ------------------------------------------------------------------------------------------------ engine sets
class _Clock:
    """The simulated clock: the close time of the 1m bar being processed."""

    now: int = 0


class BatchPredictions:
    """The pipeline's engine set for one timeframe in a backtest: predictions computed in batch per walk-forward
    window, looked up by the bar the pipeline is deciding on (``clock.now - timeframe``). The pipeline's
    incremental feature row is compared with the batch row the prediction came from (counted mismatches)."""

    def __init__(self, tf: str, clock: _Clock, open_ns: np.ndarray, X: np.ndarray) -> None:
        self.tf, self.tf_ns, self.clock = tf, timeframe_ns(tf), clock
        self.open_ns = np.asarray(open_ns, np.int64)
        self._index = {o: i for i, o in enumerate(self.open_ns.tolist())}
        self.X = X
        self.preds: dict[str, np.ndarray] = {}
        self.counters: Counter[str] = Counter()

    def set(self, kind: str, rows: np.ndarray, p: np.ndarray) -> None:
        arr = self.preds.setdefault(kind, np.full(len(self.open_ns), np.nan))
        arr[rows] = p

    def _row(self) -> int:
        return self._index.get(self.clock.now - self.tf_ns, -1)

    def predict(self, row: np.ndarray, symbol: str) -> dict[str, float]:
        i = self._row()
        if i < 0:
            self.counters["no_batch_row"] += 1
            return {}
        x = self.X[i]
        if not (row == x).all() and not np.allclose(row, x, rtol=1e-9, atol=1e-12, equal_nan=True):
            self.counters["feature_mismatch"] += 1
        out = {}
        for kind, arr in self.preds.items():
            v = arr[i]
            if math.isfinite(v):
                out[kind] = float(v)
        self.counters["served" if out else "no_prediction"] += 1
        return out


class MomentumBaseline:
    """No-model baseline: P(up) = 0.5 +/- conviction/2 by the sign of the last bar's log return (ret_1)."""

    def __init__(self, conviction: float, models: Sequence[str], active_from_ns: int, clock: _Clock) -> None:
        from engines.features import FEATURE_SCHEMA
        self.i = FEATURE_SCHEMA.names.index("ret_1")
        self.c, self.models, self.active_from, self.clock = conviction, tuple(models), active_from_ns, clock

    def predict(self, row: np.ndarray, symbol: str) -> dict[str, float]:
        if self.clock.now <= self.active_from:
            return {}
        r = row[self.i]
        if not math.isfinite(r) or r == 0:
            return {}
        p = 0.5 + (self.c / 2 if r > 0 else -self.c / 2)
        return {k: p for k in self.models}


# ------------------------------------------------------------------------------------------------ training
def _load_engines(out_dir: Path, models: Sequence[str], opts: BacktestOptions) -> dict[str, Any]:
    from engines.backends import create_engine
    from engines.features import FEATURE_SCHEMA
    engines = {}
    for kind in models:
        backend = opts.xgb_backend if kind == "xgboost" else opts.lstm_backend
        try:
            eng = create_engine(kind, backend, expected_schema_hash=FEATURE_SCHEMA.hash,
                                **({"threads": max(1, opts.threads or 2)} if kind == "lstm" else {}))
            eng.load(out_dir / kind)
        except Exception as e:  # noqa: BLE001 - backend missing here: the models' own fallback, reported
            fb = "native-cpu" if kind == "xgboost" else "torch-cpu"
            log.warning("backtest_engine_fallback", kind=kind, backend=backend, fallback=fb, error=str(e))
            eng = create_engine(kind, fb, expected_schema_hash=FEATURE_SCHEMA.hash)
            eng.load(out_dir / kind)
        engines[kind] = eng
    return engines


@dataclass
class _TfData:
    tf: str
    open_ns: np.ndarray
    X: np.ndarray
    y: np.ndarray   # training-label definition (1 up / 0 down beyond cost / -1 neither), for calibration


def _prepare_timeframes(k1m, opts: BacktestOptions) -> dict[str, _TfData]:
    from engines.train import TrainSpec, build_dataset
    out = {}
    for tf in opts.timeframes:
        ds = build_dataset(k1m, TrainSpec(tf))
        out[tf] = _TfData(tf, ds.open_ns, ds.X, ds.y)
    return out


def _train_and_predict(k1m, windows: list[Window], tfd: dict[str, _TfData], opts: BacktestOptions,
                       workdir: Path, sets: dict[str, BatchPredictions], info: dict,
                       progress=None) -> None:
    """Train (cold for the first window, warm-started after with ``opts.warm_start``) and batch-predict every
    walk-forward window, one timeframe at a time; predictions go into ``sets``, per-window facts into info."""
    info["windows"] = []

    def publish(winfo: dict, preds: list[tuple[str, str, np.ndarray, np.ndarray]]) -> None:
        _apply_window(sets, info, winfo, preds)

    _train_windows(k1m, windows, tfd, opts, workdir, publish, info["timing"], progress)


def _apply_window(sets: dict[str, BatchPredictions], info: dict, winfo: dict,
                  preds: list[tuple[str, str, np.ndarray, np.ndarray]]) -> None:
    for tf, kind, rows, p in preds:
        sets[tf].set(kind, rows, p)
    info["windows"].append(winfo)


def _train_windows(k1m, windows: list[Window], tfd: dict[str, _TfData], opts: BacktestOptions, workdir: Path,
                   publish, timing: dict, progress=None) -> None:
    """The walk-forward loop; ``publish(winfo, [(tf, kind, rows, P(up))...])`` is called once per window, in
    window order, as soon as that window's predictions exist (the simulation may start on them)."""
    with contextlib.ExitStack() as stack:
        if opts.threads:  # train_timeframe trains the LSTM even when only XGBoost trades
            stack.enter_context(_torch_threads(opts.threads))
        _windows_loop(k1m, windows, tfd, opts, workdir, publish, timing, progress or (lambda m: None))


def _train_child(conn, k1m, windows, tfd, opts, workdir) -> None:
    import traceback
    try:
        timing: dict = {}
        c0 = time.process_time()
        _train_windows(k1m, windows, tfd, opts, workdir, lambda winfo, preds: conn.send(("window", winfo, preds)),
                       timing)
        timing["train_process_cpu_s"] = time.process_time() - c0
        conn.send(("done", timing))
    except BaseException:  # noqa: BLE001 - the parent raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _TrainStream:
    """Walk-forward training + batch prediction in a forked process, streamed: the simulation of window k starts
    as soon as window k's predictions exist, while later windows still train. The simulation asks
    :meth:`until` before deciding at ``ts``; it blocks until every window with a bar closing at or before
    ``ts`` has arrived, so a decision is made on the same predictions as in a serial run."""

    def __init__(self, k1m, windows: list[Window], tfd: dict[str, _TfData], opts: BacktestOptions, workdir: Path,
                 sets: dict[str, BatchPredictions], info: dict, say) -> None:
        import multiprocessing as mp
        import threading
        self.windows, self.sets, self.info, self.say = windows, sets, info, say
        info["windows"] = []
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_train_child, args=(child, k1m, windows, tfd, opts, workdir), daemon=True,
                                 name="tradingd-backtest-train")
        self._proc.start()
        child.close()
        self._cv = threading.Condition()
        self._pending: list[tuple] = []
        self._arrived = 0          # windows received (applied or pending)
        self._end: tuple | None = None   # ("done", timing) / ("error", text) / ("died", code)
        self.applied = 0
        self.covered = windows[0].test_start_ns   # decisions up to here have every prediction they can get
        self.waited_s = 0.0
        self._reader = threading.Thread(target=self._read, name="backtest-train-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                msg = ("died", None)
            with self._cv:
                if msg[0] == "window":
                    self._pending.append(msg)
                    self._arrived += 1
                else:
                    self._end = msg
                self._cv.notify_all()
            if msg[0] != "window":
                return

    def _take(self, need: int | None) -> None:
        """Apply what arrived; with ``need``, first wait until that many windows arrived (or the run ended)."""
        t0 = time.perf_counter()
        with self._cv:
            while need is not None and self._arrived < need and self._end is None:
                self._cv.wait()
            msgs, self._pending = self._pending, []
            end = self._end
        self.waited_s += time.perf_counter() - t0
        for _, winfo, preds in msgs:
            _apply_window(self.sets, self.info, winfo, preds)
            self.applied += 1
            self.covered = self.windows[self.applied - 1].test_end_ns
            w = self.windows[self.applied - 1]
            self.say(f"window {w.index + 1}/{len(self.windows)} trained+predicted")
        if end is not None and end[0] != "done":
            self._proc.join(5)
            if end[0] == "error":
                raise RuntimeError(f"backtest training process failed:\n{end[1]}")
            raise RuntimeError(f"backtest training process died (exit code {self._proc.exitcode})")

    def until(self, ts: int) -> int:
        """Block until predictions for every bar closing at or before ``ts`` are in; returns how far they reach."""
        while self.covered < ts and self.applied < len(self.windows):
            self._take(self.applied + 1)
        return self.covered if self.applied < len(self.windows) else 1 << 62

    def finish(self) -> dict:
        self._take(len(self.windows))
        with self._cv:
            while self._end is None:
                self._cv.wait()
        self._take(None)
        self._reader.join(5)
        self._proc.join(5)
        return dict(self._end[1])

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(5)
        self._conn.close()


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's intra-op threads set to ``n`` for the LSTM training/inference, restored afterwards."""
    try:
        import torch
    except ImportError:  # no torch: the LSTM engines fall back or fail on their own
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _windows_loop(k1m, windows: list[Window], tfd: dict[str, _TfData], opts: BacktestOptions, workdir: Path,
                  publish, timing: dict, say) -> None:
    from engines.lstm_model import make_sequences
    from engines.train import TrainSpec, train_timeframe, train_timeframe_warm
    t_train = t_pred = 0.0
    open_1m = np.asarray(k1m.open_ns)
    prev: dict[str, tuple[Path, Window]] = {}  # tf -> (model dir, window) of the latest model trained
    for w in windows:
        i0, i1 = np.searchsorted(open_1m, [w.train_start_ns, w.train_end_ns])
        k_train = k1m[int(i0):int(i1)]
        winfo: dict[str, Any] = {**asdict(w), "timeframes": {}}
        wpreds: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        for tf in opts.timeframes:
            d = tfd[tf]
            tf_ns = timeframe_ns(tf)
            close = d.open_ns + tf_ns
            rows = np.flatnonzero((close > w.test_start_ns) & (close <= w.test_end_ns))
            spec = TrainSpec(tf, xgb_rounds=opts.xgb_rounds, xgb_early_stopping=opts.xgb_early_stopping,
                             lstm_epochs=opts.lstm_epochs, lstm_hidden=opts.lstm_hidden,
                             lstm_seq_len=opts.lstm_seq_len, threads=opts.threads, seed=opts.seed)
            out_dir = workdir / f"w{w.index:02d}" / tf
            t0 = time.perf_counter()
            warm = prev.get(tf) if opts.warm_start else None
            try:
                if warm is not None:
                    # walk-forward clean: the previous model's data all precede its own test window, which
                    # starts before this one (checked again below from the files' recorded data windows)
                    if warm[1].test_start_ns > w.test_start_ns:
                        raise AssertionError(f"window {w.index} {tf}: warm start from a later window")
                    outcome = train_timeframe_warm(k_train, spec, out_dir, warm[0], kinds=opts.models,
                                                   xgb_rounds=opts.xgb_warm_rounds,
                                                   xgb_early_stopping=opts.xgb_warm_early_stopping,
                                                   lstm_epochs=opts.lstm_warm_epochs)
                else:
                    outcome = train_timeframe(k_train, spec, out_dir)
            except ValueError as e:  # too little labelled data for this timeframe in this window
                t_train += time.perf_counter() - t0
                winfo["timeframes"][tf] = {"skipped": str(e)}
                say(f"window {w.index} {tf}: not trained ({e})")
                continue
            t_train += time.perf_counter() - t0
            last_train_close = outcome.data_window["end_ns"] + tf_ns
            if last_train_close > w.test_start_ns or int(k_train.open_ns[-1]) + _M > w.test_start_ns:
                raise AssertionError(f"window {w.index} {tf}: model saw data up to {last_train_close}, after the "
                                     f"window starts at {w.test_start_ns}")
            ws = outcome.data_window.get("warm_start_from") or {}
            if ws.get("end_ns") is not None and ws["end_ns"] + tf_ns > w.test_start_ns:
                raise AssertionError(f"window {w.index} {tf}: warm-started from a model that saw data up to "
                                     f"{ws['end_ns'] + tf_ns}, after the window starts at {w.test_start_ns}")
            prev[tf] = (out_dir, w)
            t0 = time.perf_counter()
            engines = _load_engines(out_dir, opts.models, opts)
            got = {}
            if len(rows):
                for kind, eng in engines.items():
                    if kind == "xgboost":
                        ok = rows[np.isfinite(d.X[rows]).all(axis=1)]
                        p = eng.predict(d.X[ok].astype(np.float32)) if len(ok) else np.empty(0)
                    else:
                        L = eng.seq_len
                        lo = max(0, int(rows[0]) - L + 1)
                        seqs, end = make_sequences(d.X[lo:int(rows[-1]) + 1], L)
                        end = end + lo
                        keep = end >= rows[0]
                        seqs, ok = seqs[keep], end[keep]
                        # in chunks: ONNX Runtime's LSTM is 2-3x faster on cache-sized batches than on one
                        # batch of a whole window (row results are identical, checked)
                        p = (np.concatenate([eng.predict(seqs[j:j + _LSTM_CHUNK])
                                             for j in range(0, len(seqs), _LSTM_CHUNK)])
                             if len(ok) else np.empty(0))
                    wpreds.append((tf, kind, ok, np.asarray(p, np.float64)))
                    got[kind] = int(len(ok))
            t_pred += time.perf_counter() - t0
            winfo["timeframes"][tf] = {"predicted_rows": got, "train_rows": outcome.data_window["rows"],
                                       "train_end_ns": outcome.data_window["end_ns"],
                                       "warm_start_from_end_ns": ws.get("end_ns"),
                                       "held_out_auc": {k: outcome.metrics[k].get("auc") for k in opts.models},
                                       "train_seconds": outcome.seconds,
                                       "backends": {k: e.backend for k, e in engines.items()}}
        publish(winfo, wpreds)
        say(f"window {w.index + 1}/{len(windows)} trained+predicted ({t_train:.1f}s train, {t_pred:.1f}s predict)")
    timing["train_s"] = t_train
    timing["batch_predict_s"] = t_pred


# ------------------------------------------------------------------------------------------------ simulation
@dataclass
class _Sim:
    """One account driven through the pipeline (strategy or baseline)."""

    name: str
    pipeline: Any
    book: SynthBook
    ledger: Any
    decisions: list[tuple] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)


def _make_pipeline(cfg, rules: SymbolRules, engine_sets: Mapping[str, Any], opts: BacktestOptions, store_path: Path,
                   starting_cash: float, clock: _Clock):
    from daemon.broker import PaperBroker
    from daemon.pipeline import TradingPipeline
    from daemon.store import SQLiteStore
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager
    filters = {rules.symbol: rules}
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": starting_cash, "latency_ms": 0.0})
    broker = PaperBroker(broker_cfg, store, symbols=(rules.symbol,), filters=filters)
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=broker_cfg.taker_fee,
                                timeframes=opts.timeframes, starting_equity=starting_cash)
    risk = RiskManager(cfg.risk, filters)
    book = SynthBook(rules, opts.spread_bps, opts.level_bps, opts.levels, opts.level_notional)
    pipe = TradingPipeline(cfg, (rules.symbol,), engine_sets, opt, risk, broker, store=None,
                           clock=lambda: clock.now, books={rules.symbol: book}, bar_sink=None, keep=64,
                           timeframes=opts.timeframes)
    return pipe, book, store


def _record(sim: _Sim, decisions, mid: float) -> None:
    from daemon.backtest.report import FillRecord
    for d in decisions:
        tags = {i.client_order_id: i for i in d.intents}
        if d.intents or d.fills:
            sim.decisions.append((d.ts, d.timeframe, d.bar_open_ns,
                                  tuple((i.client_order_id, int(i.side), i.qty, i.reason) for i in d.intents),
                                  tuple((f.fill_id, f.price, f.qty, f.fee) for f in d.fills),
                                  tuple(d.risk), tuple(d.errors)))
        for f in d.fills:
            it = tags.get(f.client_order_id)
            sim.ledger.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee, mid,
                                          it.timeframe if it else "", it.reason if it else "",
                                          f.client_order_id))


def _intrabar(sim: _Sim, bar: Bar, clock: _Clock) -> None:
    """Stops / take-profits inside the 1m bar: the optimizer sees the bar's price path (adverse extreme first)."""
    from daemon.pipeline import Decision
    pipe = sim.pipeline
    opt = pipe.optimizer
    pos = opt.positions.get(bar.symbol)
    if pos is None or pos.pending_exit is not None or pipe.broker.portfolio.qty(bar.symbol) == 0.0:
        return
    lo, hi = min(bar.open, bar.low), max(bar.open, bar.high)
    if (pos.direction > 0 and pos.stop < lo and hi < pos.take_profit) or \
            (pos.direction < 0 and pos.take_profit < lo and hi < pos.stop):
        return  # no price of this bar's path reaches the stop or the take-profit: on_price would return nothing
    path = (bar.open, bar.low, bar.high) if pos.direction > 0 else (bar.open, bar.high, bar.low)
    ts = bar.open_ns + _M // 2
    for k, price in enumerate(path):
        stop, tp = pos.stop, pos.take_profit
        acct = pipe.account()
        intents = opt.on_price(bar.symbol, price, acct, ts)
        if not intents:
            continue
        reason = intents[0].reason
        level = stop if reason == "stop" else tp
        gapped = k == 0  # the bar opened beyond the level: the exit happens at the open
        fill_ref = price if gapped else level
        sim.book.set_mid(fill_ref)
        d = Decision(bar.symbol, pos.timeframe, bar.open_ns, price, ts, {}, None, None, False)
        pipe.execute(intents, acct, sim.book, ts, d)  # the pipeline's risk -> broker -> optimizer path
        pipe.decisions.append(d)
        _record(sim, [d], fill_ref)
        return


def _simulate(sims: list[_Sim], bars: list[Bar], prime_until: int, record_from: int, clock: _Clock,
              intrabar: bool, gate=None) -> None:
    """Drive the accounts bar by bar. ``gate(ts)`` (streamed training) is asked before deciding at a ``ts``
    beyond the last answer and blocks until the predictions up to ``ts`` exist; it returns how far they reach."""
    for sim in sims:
        pre = [b for b in bars if b.open_ns + _M <= prime_until]
        sim.pipeline.prime(bars[0].symbol, pre)
    sym = bars[0].symbol
    ready = (1 << 62) if gate is None else -1
    for b in bars:
        ts = b.open_ns + _M
        if ts <= prime_until:
            continue
        if ts > ready:
            ready = gate(ts)
        clock.now = ts
        for sim in sims:
            if intrabar:
                _intrabar(sim, b, clock)
            sim.book.set_mid(b.close)
            ds = sim.pipeline.on_bar(b, sim.book)
            if ds:
                _record(sim, ds, b.close)
            if ts >= record_from:
                pf = sim.pipeline.broker.portfolio
                q = pf.qty(sym)
                sim.ts.append(ts)
                sim.equity.append(pf.cash + q * b.close)
                sim.position.append(q)
    # close out: every open position is sold/bought back on the last book
    last = bars[-1]
    for sim in sims:
        sim.book.set_mid(last.close)
        if sim.pipeline.broker.portfolio.qty(sym) != 0.0:
            d = sim.pipeline.flatten(last.open_ns + _M)
            _record(sim, [d], last.close)
            pf = sim.pipeline.broker.portfolio
            sim.equity[-1] = pf.cash + pf.qty(sym) * last.close
            sim.position[-1] = pf.qty(sym)


@dataclass
class _SimOut:
    """What the report needs from a simulated account (picklable: a forked run sends it back)."""

    name: str
    ts: np.ndarray
    equity: np.ndarray
    position: np.ndarray
    fills: list
    trades: list
    decisions: list[tuple]
    counters: dict
    seconds: float
    cpu_s: float = math.nan

    @classmethod
    def of(cls, sim: _Sim, seconds: float) -> "_SimOut":
        p = sim.pipeline
        return cls(sim.name, np.array(sim.ts, np.int64), np.array(sim.equity), np.array(sim.position),
                   sim.ledger.fills, sim.ledger.trades, sim.decisions,
                   {"pipeline": dict(p.counters), "optimizer": dict(p.optimizer.counters),
                    "risk": dict(p.risk.counters), "broker": dict(p.broker.stats)}, seconds)


def _run_baseline(cfg, rules: SymbolRules, opts: BacktestOptions, bars: list[Bar], prime_until: int,
                  record_from: int, store_path: Path, starting_cash: float) -> _SimOut:
    """The momentum baseline account over the bars (its own clock, pipeline, broker and store)."""
    from daemon.backtest.report import TradeLedger
    clock = _Clock()
    base = MomentumBaseline(opts.baseline_conviction, opts.models, record_from, clock)
    pipe, book, store = _make_pipeline(cfg, rules, {tf: base for tf in opts.timeframes}, opts, store_path,
                                       starting_cash, clock)
    sim = _Sim("baseline_momentum", pipe, book, TradeLedger())
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        _simulate([sim], bars, prime_until, record_from, clock, opts.intrabar_exits)
    finally:
        store.close()
    out = _SimOut.of(sim, time.perf_counter() - t0)
    out.cpu_s = time.process_time() - c0
    return out


_OMP_MODULES = ("torch", "xgboost", "onnxruntime")


def _fork_safe_training() -> bool:
    """Training runs in a forked child only if this process has not loaded torch/XGBoost/ONNX Runtime: once
    their OpenMP (libgomp) pools exist, a forked child that enters a parallel region waits forever on threads
    that were not copied (XGBoost's DMatrix construction always does). ``tradingd backtest`` never loads them
    before forking; a library caller (or a test run) that already trained in-process gets the serial path."""
    return not any(m in sys.modules for m in _OMP_MODULES)


def _can_fork() -> bool:
    import multiprocessing as mp
    return "fork" in mp.get_all_start_methods()


def _scratch_dir() -> str | None:
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK) else None


def _job_child(conn, fn, args) -> None:
    import traceback
    try:
        out = (True, fn(*args))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises it
        out = (False, traceback.format_exc())
    try:
        conn.send(out)
    finally:
        conn.close()


class _Job:
    """``fn(*args)`` in a forked child process (Linux; ``fork=False`` or no fork: run here, now). The child
    shares nothing mutable with the parent after the fork and sends its picklable result back; a child that
    dies or raises becomes an error here, never a silent partial report."""

    def __init__(self, fn, args: tuple, fork: bool = True) -> None:
        import multiprocessing as mp
        self._value: Any = None
        self._proc = None
        self.forked = bool(fork) and _can_fork()
        if not self.forked:
            self._value = fn(*args)
            return
        ctx = mp.get_context("fork")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_job_child, args=(child_conn, fn, args), daemon=True,
                                 name="tradingd-backtest-baseline")
        self._proc.start()
        child_conn.close()

    def result(self) -> Any:
        if not self.forked:
            return self._value
        try:
            ok, val = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"backtest baseline process died (exit code {self._proc.exitcode})") from None
        self._proc.join(5)
        if not ok:
            raise RuntimeError(f"backtest baseline process failed:\n{val}")
        return val

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join(5)
            self._conn.close()
            self._proc = None


def _buy_and_hold(cfg, rules: SymbolRules, opts: BacktestOptions, bars: list[Bar], record_from: int,
                  store_path: Path, starting_cash: float):
    """One market buy at the first recorded close (as much as the cash allows after fee and spread), marked
    every bar, one market sell at the end: the same broker, book and fees as the strategy."""
    from daemon.broker import PaperBroker
    from daemon.backtest.report import FillRecord, RunResult, TradeLedger
    from daemon.store import SQLiteStore
    from strategies.sizing import floor_to_step
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": starting_cash, "latency_ms": 0.0})
    broker = PaperBroker(broker_cfg, store, symbols=(rules.symbol,), filters={rules.symbol: rules})
    book = SynthBook(rules, opts.spread_bps, opts.level_bps, opts.levels, opts.level_notional)
    led = TradeLedger()
    ts_l, eq, pos = [], [], []
    sym = rules.symbol
    rec = [b for b in bars if b.open_ns + _M >= record_from]

    def trade(side: Side, qty: float, b: Bar, tag: str) -> None:
        book.set_mid(b.close)
        ts = b.open_ns + _M
        ex = broker.submit(OrderIntent(f"bh-{tag}", sym, side, qty, reduce_only=side < 0, reason=tag, ts=ts),
                           book, ts)
        for f in ex.fills:
            led.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee, b.close, "hold", tag,
                                   f.client_order_id))

    first = rec[0]
    book.set_mid(first.close)
    # the most we can buy: walk the book at 99.5 % of cash to leave room for the fee and depth
    qty = floor_to_step(starting_cash * 0.995 / book.best_ask()[0] / (1 + broker_cfg.taker_fee), rules.lot_step)
    ts_l.append(first.open_ns + _M)  # the curve starts with the cash, before the buy's fee and spread
    eq.append(starting_cash)
    pos.append(0.0)
    trade(Side.BUY, qty, first, "entry")
    for b in rec[1:]:
        q = broker.portfolio.qty(sym)
        ts_l.append(b.open_ns + _M)
        eq.append(broker.portfolio.cash + q * b.close)
        pos.append(q)
    trade(Side.SELL, broker.portfolio.qty(sym), rec[-1], "end_of_backtest")
    eq[-1] = broker.portfolio.cash
    pos[-1] = broker.portfolio.qty(sym)
    store.close()
    return RunResult("buy_and_hold", np.array(ts_l, np.int64), np.array(eq), np.array(pos), led.fills, led.trades)


@dataclass
class BacktestResult:
    metrics: dict
    decisions: dict[str, list[tuple]]   # run name -> compact decision log (ts, tf, bar_open, intents, fills, ...)
    report: Any                         # daemon.backtest.report.ReportData
    windows: list[Window]
    # tf -> (bar open_ns, {model: P(up) per bar, NaN where none was made}) from the batched walk-forward
    predictions: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)


def run_backtest(k1m, report_dir: str | Path | None, *, opts: BacktestOptions = BacktestOptions(), cfg=None,
                 rules: SymbolRules | None = None, starting_cash: float | None = None,
                 workdir: str | Path | None = None, progress=None) -> BacktestResult:
    """Walk-forward backtest of ``k1m`` (engines.data.Klines, 1m) and, with ``report_dir``, the report files."""
    from daemon.config import Config
    from daemon.backtest.report import ReportData, RunResult, TradeLedger, compute_metrics, write_report
    from engines.data import klines_to_bars
    opts.validate()
    cfg = cfg or Config()
    if rules is None:
        if not k1m.symbol:
            raise ValueError("the klines name no symbol: pass rules=SymbolRules(symbol) (CLI: --symbol)")
        rules = SymbolRules(k1m.symbol)
    if k1m.timeframe != "1m":
        raise ValueError(f"backtest needs 1m klines, got {k1m.timeframe}")
    starting_cash = float(starting_cash or cfg.broker.starting_cash)
    say = progress or (lambda m: None)
    t_all = time.perf_counter()
    info: dict[str, Any] = {"options": asdict(opts), "rules": asdict(rules), "starting_cash": starting_cash,
                            "data": {"rows": len(k1m), "filled_missing_minutes": k1m.filled,
                                     "dropped_duplicate_rows": k1m.duplicates,
                                     "fill_rule": "missing minutes are flat zero-volume bars at the previous close"},
                            "timing": {}}
    first, end = int(k1m.open_ns[0]), int(k1m.open_ns[-1]) + _M
    fit = fit_windows(end - first, opts.train_days, opts.test_days)
    windows = walk_forward_windows(first, end, fit.train_days, fit.test_days)
    record_from = windows[0].test_start_ns
    warnings: list[str] = []
    info["windows_rule"] = asdict(fit)
    if fit.adapted:
        warnings.append(f"{fit.data_days:.2f} days of data, shorter than train {fit.requested_train_days:g} + test "
                        f"{fit.requested_test_days:g} days: windows shrunk in proportion to train "
                        f"{fit.train_days:.2f} + test {fit.test_days:.2f} days")
        log.warning("backtest_windows_shrunk", data_days=round(fit.data_days, 3), train_days=round(fit.train_days, 3),
                    test_days=round(fit.test_days, 3))
    share = (end - record_from) / (end - first)
    info["coverage"] = {"data_days": fit.data_days, "traded_days": (end - record_from) / _DAY,
                        "traded_share": share, "warn_below": TRADED_SHARE_WARN}
    if share < TRADED_SHARE_WARN:
        warnings.append(f"only {share:.1%} of the data is traded ({(end - record_from) / _DAY:.2f} of "
                        f"{fit.data_days:.2f} days; the first {fit.train_days:g} days only train): the metrics "
                        f"describe a short span")
        log.warning("backtest_little_traded", traded_share=round(share, 4), data_days=round(fit.data_days, 3))
    info["warnings"] = warnings
    for w in warnings:
        say(f"warning: {w}")
    # the first recorded point (the bar closing at record_from) is simulated, never primed; nothing trades
    # before record_from (no predictions), so the curve starts at the starting cash
    prime_until = min(max(first, record_from - int(opts.warm_days * _DAY)), record_from - _M)

    t0 = time.perf_counter()
    tfd = _prepare_timeframes(k1m, opts)
    info["timing"]["batch_features_s"] = time.perf_counter() - t0
    clock = _Clock()
    sets = {tf: BatchPredictions(tf, clock, d.open_ns, d.X) for tf, d in tfd.items()}
    own_tmp = None
    if workdir is None:
        # scratch stores and models, deleted at the end: on tmpfs when there is one (the broker's SQLite
        # commits are fsynced; durability buys nothing here)
        own_tmp = tempfile.TemporaryDirectory(prefix="tradingd-backtest-", dir=_scratch_dir())
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    baseline_job = None
    stream: _TrainStream | None = None
    outs: list[_SimOut] = []
    try:
        t0 = time.perf_counter()
        bars = klines_to_bars(k1m)
        info["timing"]["bars_s"] = time.perf_counter() - t0
        if opts.baseline:
            # the baseline needs no model: it runs (in a forked process when allowed) while the models train
            base_args = (cfg, rules, opts, bars, prime_until, record_from, workdir / "baseline.sqlite",
                         starting_cash)
            baseline_job = _Job(_run_baseline, base_args, fork=opts.parallel)
            info["timing"]["baseline_in"] = "forked process" if baseline_job.forked else "this process"
        gate = None
        if opts.parallel and _can_fork() and _fork_safe_training():
            # training streams window by window from a forked process; the strategy simulates behind it
            stream = _TrainStream(k1m, windows, tfd, opts, workdir / "models", sets, info, say)
            gate = stream.until
            info["timing"]["training_in"] = "forked process, streamed to the simulation window by window"
        else:
            info["timing"]["training_in"] = "this process" + (
                "" if not opts.parallel or _fork_safe_training() else
                f" (not forked: {', '.join(m for m in _OMP_MODULES if m in sys.modules)} already loaded here)")
            t0 = time.perf_counter()
            _train_and_predict(k1m, windows, tfd, opts, workdir / "models", sets, info, say)
            info["timing"]["train_and_predict_wall_s"] = time.perf_counter() - t0

        pipe, book, store = _make_pipeline(cfg, rules, sets, opts, workdir / "strategy.sqlite", starting_cash, clock)
        sim = _Sim("strategy", pipe, book, TradeLedger())
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            _simulate([sim], bars, prime_until, record_from, clock, opts.intrabar_exits, gate)
            if stream is not None:
                info["timing"].update(stream.finish())
                info["timing"]["strategy_waited_for_training_s"] = stream.waited_s
        finally:
            if stream is not None:
                stream.close()
        store.close()
        info["timing"]["simulate_strategy_s"] = time.perf_counter() - t0
        info["timing"]["simulate_strategy_cpu_s"] = time.process_time() - c0  # this process only
        say(f"strategy simulated in {info['timing']['simulate_strategy_s']:.1f}s")
        outs.append(_SimOut.of(sim, info["timing"]["simulate_strategy_s"]))
        t0 = time.perf_counter()
        bh = _buy_and_hold(cfg, rules, opts, bars, record_from, workdir / "buy_and_hold.sqlite", starting_cash)
        info["timing"]["buy_and_hold_s"] = time.perf_counter() - t0
        if baseline_job is not None:
            t0 = time.perf_counter()
            bout = baseline_job.result()
            info["timing"]["baseline_wait_s"] = time.perf_counter() - t0
            info["timing"]["simulate_baseline_s"] = bout.seconds
            info["timing"]["simulate_baseline_cpu_s"] = bout.cpu_s
            outs.append(bout)
    finally:
        if baseline_job is not None:
            baseline_job.close()
        if own_tmp is not None:
            own_tmp.cleanup()

    runs = {}
    for o in outs:
        runs[o.name] = RunResult(o.name, o.ts, o.equity, o.position, o.fills, o.trades)
        info.setdefault("counters", {})[o.name] = o.counters
    runs["buy_and_hold"] = bh
    info["counters"]["batch_predictions"] = {tf: dict(s.counters) for tf, s in sets.items()}
    calib: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for tf, s in sets.items():
        for kind, arr in s.preds.items():
            m = np.isfinite(arr)
            calib.setdefault(tf, {})[kind] = (arr[m], tfd[tf].y[m].astype(np.float64))
    rec = np.flatnonzero(np.asarray(k1m.open_ns) + _M >= record_from)
    price_ts = np.asarray(k1m.open_ns)[rec] + _M
    data = ReportData(k1m.symbol or rules.symbol, 60.0, price_ts, np.asarray(k1m.close)[rec], runs, calib, info)
    info["timing"]["total_before_report_s"] = time.perf_counter() - t_all
    t0 = time.perf_counter()
    metrics = write_report(report_dir, data) if report_dir is not None else compute_metrics(data)
    info["timing"]["report_s"] = time.perf_counter() - t0
    return BacktestResult(metrics, {o.name: o.decisions for o in outs}, data, windows,
                          {tf: (s.open_ns, dict(s.preds)) for tf, s in sets.items()})


# ------------------------------------------------------------------------------------------------ recording
@dataclass(frozen=True)
class OrderRecord:
    """One order the pipeline sent to the broker during a recording replay, with the book it met."""

    client_order_id: str
    side: int
    qty: float            # the quantity submitted (after risk)
    ts: int
    mid: float            # book mid when submitted (the report's slippage reference)
    bids: tuple           # book depth at submission (levels the broker could walk)
    asks: tuple
    fills: tuple          # the Fills this submission produced at once


class _FillTap:
    """Wraps the paper broker: every execution (an order submitted at a bar close or on a stop/TP, a resting or
    latency-delayed order filled later) passes through here, so the report's ledger sees every fill with the
    book mid at that moment. Everything else is the broker's own attribute."""

    def __init__(self, broker: Any, ledger: Any, keep_depth: int) -> None:
        self._b = broker
        self.ledger = ledger
        self.keep_depth = keep_depth
        self.orders: list[OrderRecord] = []
        self._tags: dict[str, tuple[str, str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    @staticmethod
    def _mid(book: Any) -> float:
        if book is None or not getattr(book, "is_tradeable", True):
            return math.nan
        m = book.mid()
        return float(m) if m is not None else math.nan

    def _take(self, ex: Any, mid: float) -> None:
        from daemon.backtest.report import FillRecord
        for f in ex.fills:
            tf, reason = self._tags.get(f.client_order_id, ("", ""))
            if not reason:  # broker-side stop exits are named <tag>-sl / <tag>-tp
                reason = {"sl": "stop", "tp": "take_profit"}.get(f.client_order_id.rsplit("-", 1)[-1], "")
            self.ledger.on_fill(FillRecord(f.ts, f.symbol, int(f.side), f.price, f.qty, f.fee,
                                           mid if mid == mid else f.price, tf, reason, f.client_order_id))

    def submit(self, intent: OrderIntent, book: Any, ts: int, **kw: Any):
        mid = self._mid(book)
        if book is not None and getattr(book, "is_tradeable", False):
            bids, asks = book.depth(self.keep_depth)
        else:
            bids, asks = (), ()
        self._tags[intent.client_order_id] = (intent.timeframe, intent.reason)
        ex = self._b.submit(intent, book, ts, **kw)  # OrderError propagates to the pipeline, as live
        if ex.is_new:
            self.orders.append(OrderRecord(intent.client_order_id, int(intent.side), intent.qty, ts, mid,
                                           tuple(bids), tuple(asks), tuple(ex.fills)))
            self._take(ex, mid)
        return ex

    def on_trade(self, trade: Any, book: Any = None, **kw: Any):
        execs = self._b.on_trade(trade, book, **kw)
        if execs:
            mid = self._mid(book)
            for ex in execs:
                self._take(ex, mid)
        return execs

    def on_book(self, symbol: str, book: Any, ts: int, **kw: Any):
        execs = self._b.on_book(symbol, book, ts, **kw)
        if execs:
            mid = self._mid(book)
            for ex in execs:
                self._take(ex, mid)
        return execs


class _ReplayClock:
    """The pipeline's latency clock in a replay: the trade's recorded receive time plus the CPU time spent since
    the replay handed the trade over, so tick-to-decision measures this process's work, not 2024 vs now."""

    __slots__ = ("ts", "t0")

    def __init__(self) -> None:
        self.ts = 0
        self.t0 = 0

    def __call__(self) -> int:
        return self.ts + (time.perf_counter_ns() - self.t0)


def decision_key(d: Any) -> tuple:
    """A Decision as a comparable tuple (everything but the measured latency)."""
    return (d.ts, d.symbol, d.timeframe, d.bar_open_ns, d.close, tuple(sorted(d.predictions.items())), d.atr,
            d.book_stale,
            tuple((i.client_order_id, int(i.side), i.qty, i.reason, i.timeframe) for i in d.intents),
            tuple(tuple(r) for r in d.risk),
            tuple((f.fill_id, f.client_order_id, int(f.side), f.price, f.qty, f.fee, f.ts) for f in d.fills),
            tuple(tuple(e) for e in d.errors))


@dataclass
class RecordingResult:
    metrics: dict
    decisions: list            # pipeline Decisions, in order (bar closes and between-bar stop/TP exits)
    orders: list[OrderRecord]  # every order submitted, with the book depth it met
    counters: dict             # frames, trades, decode drops, book stats, pipeline/optimizer/risk/broker counters
    report: Any                # daemon.backtest.report.ReportData
    pipeline: Any
    book: Any


def run_recording_backtest(paths: str | Path | Sequence[str | Path], registry: str | Path | Any,
                           report_dir: str | Path | None, *, cfg=None, symbol: str | None = None,
                           history: Any = None, timeframes: Sequence[str] | None = None,
                           kinds: Sequence[str] = ("xgboost", "lstm"), rules: SymbolRules | None = None,
                           starting_cash: float | None = None, workdir: str | Path | None = None,
                           progress=None) -> RecordingResult:
    """Replay a raw ``<recv_ns> <frame>`` recording through the live path and report on it.

    decode_frame -> OrderBook (the real L2 book; the broker walks it for fills) -> TradingPipeline.on_trade
    (bars -> features -> engines -> optimizer -> risk -> paper broker), time = the recording's receive times,
    as fast as the CPU goes. Models: the CURRENT versions in ``registry`` (EngineSet.load, as ``tradingd run``).
    ``history``: 1m Bars or Klines ending before the recording, primed into the feature state at the first
    trade (only bars that open before the recording's first minute are used); without it predictions start
    after the features' warm-up. Equity is marked on the book mid every minute of recording time; at the end
    every position is closed on the last book, so the trade list accounts for the whole equity change."""
    import msgspec

    from daemon.binance.codec import DecodeError, decode_frame
    from market.book import OrderBook
    from daemon.broker import PaperBroker
    from daemon.config import Config
    from daemon.engineset import EngineSet
    from market.events import BookTicker, DepthSnapshot, DepthUpdate, Trade
    from daemon.pipeline import TradingPipeline, history_bars_needed
    from daemon.recording import RecordingReader
    from daemon.backtest.report import ReportData, RunResult, TradeLedger, compute_metrics, write_report
    from daemon.store import SQLiteStore
    from engines.registry import ModelRegistry
    from strategies.optimizer import DollarProfitOptimizer
    from strategies.risk import RiskManager

    cfg = cfg or Config()
    say = progress or (lambda m: None)
    tfs = tuple(timeframes or cfg.general.timeframes)
    for tf in tfs:
        timeframe_ns(tf)
    reader = RecordingReader(paths)
    if not reader.paths:
        raise ValueError(f"no recording files in {paths}")
    for p in reader.paths:
        if not p.is_file():
            raise FileNotFoundError(f"recording file not found: {p}")
    reg = registry if hasattr(registry, "load") else ModelRegistry(Path(registry))
    t0 = time.perf_counter()
    engine_sets = {tf: EngineSet.load(reg, tf, cfg.engines, kinds=tuple(kinds)) for tf in tfs}
    info: dict[str, Any] = {"mode": "recording", "recording": [str(p) for p in reader.paths],
                            "registry": str(getattr(reg, "root", registry)), "timeframes": list(tfs),
                            "models": {tf: es.info() for tf, es in engine_sets.items()},
                            "timing": {"engines_load_s": time.perf_counter() - t0},
                            "fills": "market orders walk the recorded L2 book at the decision's receive time; "
                                     f"taker fee {cfg.broker.taker_fee}",
                            "equity_marks": "cash + position x book mid, every minute of recording time",
                            "calibration": "not computed: a recording of minutes has too few labelled bars"}
    hist_bars: list[Bar] = []
    if history is not None:
        if hasattr(history, "open_ns") and hasattr(history, "close"):
            from engines.data import klines_to_bars
            if getattr(history, "timeframe", "1m") != "1m":
                raise ValueError(f"history must be 1m bars, got {history.timeframe}")
            hist_bars = klines_to_bars(history)
        else:
            hist_bars = list(history)
        if any(b.timeframe != "1m" for b in hist_bars):
            raise ValueError("history must be 1m bars")
    seq = max((es.seq_len for es in engine_sets.values()), default=0)
    need_min = history_bars_needed(tfs, seq)
    if not hist_bars:
        info["warmup_note"] = (f"no history given: predictions start only after the features' warm-up "
                               f"(~{need_min} minutes of recording for {','.join(tfs)})")
        say(f"tradingd backtest: {info['warmup_note']}")

    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="tradingd-backtest-rec-")
        workdir = own_tmp.name
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "recording.sqlite"
    for suffix in ("", "-wal", "-shm"):  # a fresh account every run (the broker recovers from its store)
        Path(str(store_path) + suffix).unlink(missing_ok=True)
    store = SQLiteStore(store_path, quote_asset=cfg.broker.quote_asset)
    cash = float(starting_cash or cfg.broker.starting_cash)
    broker_cfg = cfg.broker.__class__(**{**asdict(cfg.broker), "starting_cash": cash})
    info["starting_cash"] = cash

    c: Counter[str] = Counter()
    ledger = TradeLedger()
    clock = _ReplayClock()
    st: dict[str, Any] = {"sym": symbol, "pipe": None, "book": None, "tap": None}
    pending_snaps: list = []
    mark_ts: list[int] = []
    mark_eq: list[float] = []
    mark_pos: list[float] = []
    mark_px: list[float] = []
    next_mark = 0
    last_price = math.nan
    last_ts = 0
    first_trade_ts = 0

    def start(sym: str) -> None:
        rules_ = rules if rules is not None and rules.symbol == sym else SymbolRules(sym)
        filters = {sym: rules_}
        book = OrderBook(sym)
        broker = PaperBroker(broker_cfg, store, symbols=(sym,), filters=filters)
        tap = _FillTap(broker, ledger, broker_cfg.book_depth)
        opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters=filters, fee_rate=broker_cfg.taker_fee,
                                    timeframes=tfs, starting_equity=cash)
        pipe = TradingPipeline(cfg, (sym,), engine_sets, opt, RiskManager(cfg.risk, filters), tap, store=None,
                               clock=clock, books={sym: book}, bar_sink=None, keep=None, timeframes=tfs)
        st.update(sym=sym, pipe=pipe, book=book, tap=tap)
        info["rules"] = asdict(rules_)
        for s in pending_snaps:
            book.on_snapshot(DepthSnapshot(sym, s.last_update_id, s.bids, s.asks, s.ts_recv))

    def prime(first: Trade) -> None:
        start_min = first.ts_event - first.ts_event % _M
        use = [b for b in hist_bars if b.open_ns < start_min and b.symbol in ("", st["sym"])]
        c["history_bars_after_start_dropped"] += len(hist_bars) - len(use)
        if not use:
            return
        use = use[-need_min:]
        if use[0].symbol != st["sym"]:  # klines CSV without a symbol
            use = [msgspec.structs.replace(b, symbol=st["sym"]) for b in use]
        rows = st["pipe"].prime(st["sym"], use)
        gap = (start_min - (use[-1].open_ns + _M)) // _M
        info["history"] = {"bars_used": len(use), "rows_primed": rows, "first_open_ns": use[0].open_ns,
                           "last_open_ns": use[-1].open_ns, "gap_minutes_to_recording": int(gap),
                           "bars_needed": need_min}
        if gap > 0:
            log.warning("backtest_history_gap", minutes=int(gap))
        if len(use) < need_min:
            info["history"]["note"] = f"{len(use)} bars < {need_min} needed: some predictions start later"

    def mark_until(ts: int) -> None:
        nonlocal next_mark
        pipe, book = st["pipe"], st["book"]
        while ts >= next_mark:
            m = book.mid() if book.is_tradeable else None
            px = float(m) if m is not None else last_price
            pf = pipe.broker.portfolio
            q = pf.qty(st["sym"])
            mark_ts.append(next_mark)
            mark_eq.append(pf.cash + q * px)
            mark_pos.append(q)
            mark_px.append(px)
            next_mark += _M

    t_run = time.perf_counter()
    for recv_ns, raw in reader:
        c["frames"] += 1
        try:
            ev = decode_frame(raw, recv_ns)
        except DecodeError as e:
            c[f"decode_dropped.{e.reason}"] += 1
            continue
        if ev is None:
            c["frames_ignored"] += 1
            continue
        sym = st["sym"]
        t = type(ev)
        if t is DepthSnapshot:
            c["snapshots"] += 1
            if ev.symbol and sym and ev.symbol != sym:
                c["other_symbol_frames"] += 1
            elif st["book"] is not None:
                st["book"].on_snapshot(ev if ev.symbol else DepthSnapshot(sym, ev.last_update_id, ev.bids,
                                                                          ev.asks, ev.ts_recv))
            elif ev.symbol and sym is None:
                start(ev.symbol)
                st["book"].on_snapshot(ev)
            else:
                pending_snaps.append(ev)  # applied when the symbol is known
            continue
        if t is BookTicker:
            c["book_tickers"] += 1
            continue
        if sym is None:
            start(ev.symbol)
            sym = ev.symbol
        elif st["pipe"] is None:
            start(sym)
        if ev.symbol != sym:
            c["other_symbol_frames"] += 1
            continue
        pipe, book = st["pipe"], st["book"]
        last_ts = max(last_ts, ev.ts_recv)
        if next_mark:
            mark_until(ev.ts_recv)
        if t is DepthUpdate:
            c["depth_updates"] += 1
            book.on_update(ev)
            pipe.on_depth(sym, book, ev.ts_recv)
        elif t is Trade:
            c["trades"] += 1
            if not first_trade_ts:
                first_trade_ts = ev.ts_recv
                prime(ev)
                # the curve starts with the cash at the first trade; marks follow every whole minute
                mark_ts.append(ev.ts_recv)
                mark_eq.append(cash)
                mark_pos.append(0.0)
                mark_px.append(ev.price)
                next_mark = ev.ts_recv - ev.ts_recv % _M + _M
            clock.ts = ev.ts_recv
            clock.t0 = time.perf_counter_ns()
            pipe.on_trade(ev, book)
            if ev.price > 0 and math.isfinite(ev.price):
                last_price = ev.price
        else:
            c[f"events.{t.__name__}"] += 1
    info["timing"]["replay_s"] = time.perf_counter() - t_run
    pipe, book, tap = st["pipe"], st["book"], st["tap"]
    if pipe is None or not first_trade_ts:
        store.close()
        if own_tmp is not None:
            own_tmp.cleanup()
        raise ValueError(f"no trades{' of ' + symbol if symbol else ''} in the recording {reader.paths}")
    sym = st["sym"]
    # close out on the last book: the trade list then accounts for the whole equity change
    if pipe.broker.portfolio.qty(sym) != 0.0:
        pipe.flatten(last_ts)
    pf = pipe.broker.portfolio
    m = book.mid() if book.is_tradeable else None
    px = float(m) if m is not None else last_price
    q = pf.qty(sym)
    if q != 0.0:
        info["open_at_end"] = {"qty": q, "note": "the end-of-run flatten did not fill (book not tradeable)"}
    mark_ts.append(max(last_ts, mark_ts[-1] + 1))
    mark_eq.append(pf.cash + q * px)
    mark_pos.append(q)
    mark_px.append(px)
    store.close()
    if own_tmp is not None:
        own_tmp.cleanup()

    n_tr = c["trades"]
    rs = info["timing"]["replay_s"]
    info["timing"]["trades_per_s"] = n_tr / rs if rs > 0 else None
    info["timing"]["frames_per_s"] = c["frames"] / rs if rs > 0 else None
    info["span"] = {"first_trade_ns": first_trade_ts, "last_event_ns": last_ts,
                    "minutes": (last_ts - first_trade_ts) / _M}
    info["latency_tick_to_decision"] = pipe.latency_summary()
    counters = {"replay": dict(c), "reader": reader.stats.as_dict(), "book": _book_stats(book),
                "bars": _plain(pipe.builder(sym).stats), "pipeline": dict(pipe.counters),
                "optimizer": dict(pipe.optimizer.counters), "risk": dict(pipe.risk.counters),
                "broker": dict(pipe.broker.stats), "orders": len(tap.orders)}
    info["counters"] = counters
    runs = {"strategy": RunResult("strategy", np.array(mark_ts, np.int64), np.array(mark_eq), np.array(mark_pos),
                                  ledger.fills, ledger.trades)}
    data = ReportData(sym, 60.0, np.array(mark_ts, np.int64), np.array(mark_px), runs, {}, info)
    t0 = time.perf_counter()
    metrics = write_report(report_dir, data) if report_dir is not None else compute_metrics(data)
    info["timing"]["report_s"] = time.perf_counter() - t0
    return RecordingResult(metrics, list(pipe.decisions), list(tap.orders), counters, data, pipe, book)


def _plain(x: Any) -> Any:
    if hasattr(x, "__dataclass_fields__"):
        return _plain(asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _book_stats(book: Any) -> dict:
    out = _plain(book.stats.as_dict())
    out["state"] = str(getattr(book.state, "value", book.state))
    return out


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p) -> None:
    d = BacktestOptions()
    p.add_argument("--data", help="1m klines CSV (open_time_ms,open,high,low,close,volume; .gz ok)")
    p.add_argument("--store", help="read 1m bars from the daemon's SQLite store instead")
    p.add_argument("--recording", nargs="+", metavar="PATH",
                   help="raw frame recording(s) (<recv_ns> <frame> .gz files or directories): replayed through the "
                        "live path (real L2 book fills) with the models of --registry")
    p.add_argument("--registry", help="--recording: model registry directory (e.g. made by `tradingd train`)")
    p.add_argument("--history", help="--recording: 1m klines CSV ending before the recording, primes the features "
                                     "(without it predictions start after the warm-up)")
    p.add_argument("--symbol", default="",
                   help="symbol (default: the pair the --data file name names, e.g. BTC_USDT-1m_...csv.gz or "
                        "BTCUSDT-5m.csv.gz; required when it names none, and with --store)")
    p.add_argument("--report", required=True, help="report directory (metrics.json, trades.csv, PNGs, index.html)")
    p.add_argument("--config", help="config.toml (optimizer, risk, broker fees, bars); default: built-in defaults")
    p.add_argument("--timeframes", default=",".join(d.timeframes))
    p.add_argument("--models", default=",".join(d.models), help="xgboost,lstm or one of them")
    p.add_argument("--train-days", type=float, default=d.train_days,
                   help=f"walk-forward training days; a file shorter than train+test has both shrunk in proportion "
                        f"(down to {MIN_TRAIN_DAYS:g} + {MIN_TEST_DAYS:g} days, else exit 2)")
    p.add_argument("--test-days", type=float, default=d.test_days, help="walk-forward test (traded) days")
    p.add_argument("--warm-days", type=float, default=d.warm_days,
                   help="days of decisions without predictions before the first window (optimizer warm-up)")
    p.add_argument("--xgb-rounds", type=int, default=d.xgb_rounds)
    p.add_argument("--xgb-early-stopping", type=int, default=d.xgb_early_stopping)
    p.add_argument("--lstm-epochs", type=int, default=d.lstm_epochs)
    p.add_argument("--lstm-hidden", type=int, default=d.lstm_hidden)
    p.add_argument("--lstm-seq-len", type=int, default=d.lstm_seq_len)
    p.add_argument("--threads", type=int, default=d.threads,
                   help="threads per library for training/inference (0 = library default; 1 is fastest on small "
                        "shared boxes)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="train every walk-forward window from scratch (default: window 1 from scratch, later "
                        "windows continue the previous window's models)")
    p.add_argument("--xgb-warm-rounds", type=int, default=d.xgb_warm_rounds,
                   help="warm start: XGBoost trees added per window (early-stopped)")
    p.add_argument("--lstm-warm-epochs", type=int, default=d.lstm_warm_epochs,
                   help="warm start: LSTM fine-tuning epochs per window (on the windows not fitted yet)")
    p.add_argument("--serial", action="store_true",
                   help="run the momentum baseline in this process after the strategy (default: a forked "
                        "process while the models train)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--xgb-backend", default=d.xgb_backend)
    p.add_argument("--lstm-backend", default=d.lstm_backend)
    p.add_argument("--spread-bps", type=float, default=d.spread_bps, help="synthetic book full spread (bps)")
    p.add_argument("--level-bps", type=float, default=d.level_bps, help="synthetic book level spacing (bps)")
    p.add_argument("--levels", type=int, default=d.levels, help="synthetic book levels per side")
    p.add_argument("--level-notional", type=float, default=d.level_notional,
                   help="synthetic book size per level (quote)")
    p.add_argument("--tick-size", type=float, default=SymbolRules.tick_size)
    p.add_argument("--lot-step", type=float, default=SymbolRules.lot_step)
    p.add_argument("--min-notional", type=float, default=SymbolRules.min_notional)
    p.add_argument("--starting-cash", type=float, default=0.0, help="0 = broker.starting_cash")
    p.add_argument("--no-baseline", action="store_true", help="skip the momentum baseline run")
    p.add_argument("--baseline-conviction", type=float, default=d.baseline_conviction)
    p.add_argument("--no-intrabar-exits", action="store_true",
                   help="check stops/take-profits only at bar closes (not on each 1m bar's range)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="log level during the run (info logs every intent and timeframe switch)")
    p.add_argument("--workdir", help="keep the walk-forward models here (default: a temporary directory)")


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def main(args) -> int:
    import orjson

    from daemon.config import load_config
    from daemon.logs import configure
    from engines.data import KlinesError
    configure(level=args.log_level, json=False)
    if args.recording:
        return _main_recording(args)
    if not args.data and not args.store:
        print("tradingd backtest: give --data CSV or --store PATH", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        opts = BacktestOptions(
            timeframes=_split(args.timeframes), models=_split(args.models), train_days=args.train_days,
            test_days=args.test_days, warm_days=args.warm_days, xgb_rounds=args.xgb_rounds,
            xgb_early_stopping=args.xgb_early_stopping, lstm_epochs=args.lstm_epochs,
            lstm_hidden=args.lstm_hidden, lstm_seq_len=args.lstm_seq_len, threads=args.threads, seed=args.seed,
            warm_start=not args.no_warm_start, xgb_warm_rounds=args.xgb_warm_rounds,
            lstm_warm_epochs=args.lstm_warm_epochs, parallel=not args.serial,
            xgb_backend=args.xgb_backend, lstm_backend=args.lstm_backend, spread_bps=args.spread_bps,
            level_bps=args.level_bps, levels=args.levels, level_notional=args.level_notional,
            baseline=not args.no_baseline, baseline_conviction=args.baseline_conviction,
            intrabar_exits=not args.no_intrabar_exits)
        opts.validate()
        t0 = time.perf_counter()
        if args.data:
            from engines.data import load_klines_csv, symbol_from_name
            if not (args.symbol or symbol_from_name(args.data)):  # never a default symbol (eth.csv is not BTC)
                print(f"tradingd backtest: {args.data}: the file name names no trading pair (like BTC_USDT-1m_... "
                      f"or BTCUSDT-5m.csv.gz); pass --symbol, e.g. --symbol ETHUSDT", file=sys.stderr)
                return 2
            k = load_klines_csv(args.data, symbol=args.symbol or None)
        else:
            if not args.symbol:
                print("tradingd backtest: --store needs --symbol (the store keeps bars of every symbol)",
                      file=sys.stderr)
                return 2
            from daemon.train_cli import load_training_data
            k = load_training_data(None, store=args.store, symbol=args.symbol)
        load_s = time.perf_counter() - t0
        rules = SymbolRules(k.symbol, tick_size=args.tick_size, lot_step=args.lot_step,
                            min_qty=args.lot_step, min_notional=args.min_notional)
        res = run_backtest(k, args.report, opts=opts, cfg=cfg, rules=rules,
                           starting_cash=args.starting_cash or None, workdir=args.workdir,
                           progress=lambda m: print(m, file=sys.stderr))
    except DataTooShort as e:
        print(f"tradingd backtest: {args.data or args.store}: {e}", file=sys.stderr)
        return 2
    except (KlinesError, ValueError, OSError) as e:
        print(f"tradingd backtest: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    t = dict(m["info"]["timing"], load_s=load_s)
    summary = {"report": str(Path(args.report).resolve()), "symbol": m["symbol"], "timing_s": t,
               "warnings": m["info"].get("warnings", []),
               "runs": {name: {k: r.get(k) for k in ("total_return", "annualised_return", "sharpe", "sortino",
                                                      "max_drawdown", "trades", "win_rate", "profit_factor",
                                                      "fees_paid", "slippage_paid", "exposure")}
                        for name, r in m["runs"].items()}}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def _main_recording(args) -> int:
    """``tradingd backtest --recording PATH... --registry DIR --report DIR [--history CSV]``."""
    import orjson

    from daemon.config import load_config
    from engines.base import ModelLoadError
    from engines.data import KlinesError
    if args.data or args.store:
        print("tradingd backtest: --recording replays a recording; --data/--store are for klines runs",
              file=sys.stderr)
        return 2
    if not args.registry:
        print("tradingd backtest: --recording needs --registry DIR (models, e.g. from `tradingd train`)",
              file=sys.stderr)
        return 2
    if not Path(args.registry).is_dir():
        print(f"tradingd backtest: registry {args.registry} is not a directory", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        history = None
        if args.history:
            from engines.data import load_klines_csv
            history = load_klines_csv(args.history, symbol=args.symbol or None)
        else:
            print("tradingd backtest: no --history: predictions start only after the features' warm-up",
                  file=sys.stderr)
        timeframes = _split(args.timeframes)
        sym = args.symbol or None
        rules = SymbolRules(sym or "BTCUSDT", tick_size=args.tick_size, lot_step=args.lot_step,
                            min_qty=args.lot_step, min_notional=args.min_notional)
        res = run_recording_backtest(args.recording, args.registry, args.report, cfg=cfg, symbol=sym,
                                     history=history, timeframes=timeframes, kinds=_split(args.models),
                                     rules=rules, starting_cash=args.starting_cash or None, workdir=args.workdir,
                                     progress=lambda m: print(m, file=sys.stderr))
    except (KlinesError, ModelLoadError, ValueError, OSError) as e:
        print(f"tradingd backtest: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    r = m["runs"]["strategy"]
    c = res.counters
    summary = {"report": str(Path(args.report).resolve()), "symbol": m["symbol"], "timing_s": m["info"]["timing"],
               "trades_processed": c["replay"].get("trades", 0), "frames": c["replay"].get("frames", 0),
               "bars": c["pipeline"].get("bars", 0), "predictions": {k: v for k, v in c["pipeline"].items()
                                                                    if k.startswith("predictions.")},
               "orders": c["orders"], "fills": c["pipeline"].get("fills", 0),
               "strategy": {k: r.get(k) for k in ("pnl", "total_return", "trades", "fees_paid", "slippage_paid",
                                                  "max_drawdown")}}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0
