"""Walk-forward training and batched prediction, in this process or streamed from a forked one; and the forked
job that runs the momentum baseline meanwhile.

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
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from daemon.backtest.options import _M, BacktestOptions, Window
from daemon.backtest.predictions import BatchPredictions
from market.events import timeframe_ns

log = structlog.get_logger(__name__)

_LSTM_CHUNK = 256


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
                             lstm_seq_len=opts.lstm_seq_len, threads=opts.threads, seed=opts.seed,
                             lstm_int8=opts.lstm_int8 if opts.lstm_backend == "onnxruntime-cpu-int8" else "none")
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
