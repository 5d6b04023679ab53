"""First run: a registry without current models and ``engines.train_on_first_run`` -> 1m klines history from the
venue's REST klines (simulate: ``simulator.history_days``, remote: ``engines.first_run_history_days``) and a SMALL
TrainSpec (``engines.first_run_*``) trained in a spawned child process (its memory goes back to the OS when it
exits; progress lines on stdout). Universe mode (``engines.family = "universe"``): every symbol's 1m history is
fetched, written as a ``SYMBOL-1m.csv.gz`` folder under ``general.data_dir`` and the child runs ``tradingd train
--data`` on it (the pooled bundles, published into the registry)."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.logs import say

log = structlog.get_logger(__name__)


class FirstRunError(Exception):
    """Models are missing and cannot be made; the message says what a human must fix (start-up failure)."""


async def ensure_models(cfg: Any, registry: Any, rest_url: str, timings: dict[str, float],
                        status: Callable[[str], None]) -> dict | None:
    """Train first models when the registry has none (and the config allows it). Returns the history klines
    fetched for it by symbol (reused for priming) or None."""
    from daemon.binance.rest import fetch_klines_rest
    from engines.base import ModelLoadError
    from engines.train import missing_models
    if cfg.model_family == "universe":
        return await ensure_universe_models(cfg, registry, rest_url, timings, status)
    try:
        missing = missing_models(registry, cfg.general.timeframes)
    except ModelLoadError as e:  # e.g. a `current` pointer naming no version directory: the file is named
        raise FirstRunError(f"model registry: {e}") from None
    if not missing:
        return None
    if not cfg.engines.train_on_first_run:
        raise FirstRunError(f"no current models for {missing} in {registry.root} and "
                            "engines.train_on_first_run is false: run `tradingd train` first")
    sym = cfg.general.symbols[0]
    days = cfg.simulator.history_days if cfg.venue.mode == "simulate" else cfg.engines.first_run_history_days
    say(f"first run: no models for {','.join(missing)}; fetching {days:g} days of {sym} 1m klines "
        f"from {rest_url}")
    status("first run: fetching history")
    t0 = time.perf_counter()
    try:
        k = await fetch_klines_rest(rest_url, sym, days=days)
    except Exception as e:  # noqa: BLE001
        raise FirstRunError(f"first run: cannot fetch klines history from {rest_url}: {e}") from None
    timings["history_fetch_s"] = time.perf_counter() - t0
    say(f"first run: {len(k)} bars fetched in {timings['history_fetch_s']:.1f} s; training "
        f"(xgb_rounds={cfg.engines.first_run_xgb_rounds}, lstm_epochs={cfg.engines.first_run_lstm_epochs}, "
        f"lstm_hidden={cfg.engines.first_run_lstm_hidden})")
    status("first run: training")
    t0 = time.perf_counter()
    try:
        pid = await train_in_child(cfg, str(registry.root), k, missing)
    except Exception as e:  # noqa: BLE001
        raise FirstRunError(f"first-run training failed: {type(e).__name__}: {e}") from None
    timings["first_run_train_s"] = time.perf_counter() - t0
    log.info("first_run_trained", timeframes=list(missing), train_pid=pid, daemon_pid=os.getpid(),
             seconds=round(timings["first_run_train_s"], 3))
    say(f"first run: trained {','.join(missing)} in {timings['first_run_train_s']:.1f} s (child process {pid})")
    return {sym: k}


async def train_in_child(cfg: Any, registry_root: str, k: Any, timeframes: Any) -> int:
    """First-run training in a spawned child process (returns its pid): the training's memory (torch,
    XGBoost's DMatrix, the feature frames) goes back to the OS when it exits, so the daemon stays small."""
    e = cfg.engines
    specs = [dict(timeframe=tf, xgb_rounds=e.first_run_xgb_rounds, lstm_epochs=e.first_run_lstm_epochs,
                  lstm_hidden=e.first_run_lstm_hidden, threads=e.first_run_threads,
                  cost=2 * cfg.broker.taker_fee + 0.0001) for tf in timeframes]
    return await _run_child(_first_run_child, (registry_root, k, specs, cfg.logging.level))


def _first_run_child(registry_root: str, k: Any, specs: list[dict], level: str, fmt: str, conn: Any) -> None:
    """Child process: train and publish each missing timeframe (progress lines like the daemon's); sends
    ``("ok", pid)`` or ``("error", message)``."""
    from daemon.logs import configure
    configure(level, fmt=fmt)
    try:
        from engines.registry import ModelRegistry
        from engines.train import TrainSpec, train_and_publish
        registry = ModelRegistry(registry_root)
        for kw in specs:
            t0 = time.perf_counter()
            outcome, refs = train_and_publish(k, TrainSpec(**kw), registry, make_current=True, progress=say)
            say(f"first run: {kw['timeframe']} done in {time.perf_counter() - t0:.1f} s "
                f"(versions {', '.join(f'{n}={r.version}' for n, r in refs.items())}; pid {os.getpid()})")
    except Exception as e:  # noqa: BLE001 - reported to the daemon, which exits 3 with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    else:
        conn.send(("ok", os.getpid()))
    finally:
        conn.close()


async def ensure_universe_models(cfg: Any, registry: Any, rest_url: str, timings: dict[str, float],
                                 status: Callable[[str], None]) -> dict | None:
    """Universe mode's first run: the pooled bundles of the timeframes without one, trained on every symbol's
    history (see the module docstring). Returns the history klines by symbol (reused for priming) or None."""
    from daemon.binance.rest import fetch_klines_rest
    from engines.base import ModelLoadError
    from engines.pooled import UNIVERSE_KIND
    try:
        missing = [tf for tf in cfg.general.timeframes if registry.current_version(tf, UNIVERSE_KIND) is None]
    except ModelLoadError as e:
        raise FirstRunError(f"model registry: {e}") from None
    if not missing:
        return None
    if not cfg.engines.train_on_first_run:
        raise FirstRunError(f"no current universe models for {missing} in {registry.root} and "
                            f"engines.train_on_first_run is false: run `tradingd train --data DIR --registry "
                            f"{registry.root}` first")
    days = cfg.simulator.history_days if cfg.venue.mode == "simulate" else cfg.engines.first_run_history_days
    syms = cfg.general.symbols
    say(f"first run (universe): no models for {','.join(missing)}; fetching {days:g} days of 1m klines of "
        f"{len(syms)} symbols from {rest_url}")
    status("first run: fetching history")
    t0 = time.perf_counter()
    hist = {}
    for sym in syms:
        try:
            hist[sym] = await fetch_klines_rest(rest_url, sym, days=days)
        except Exception as e:  # noqa: BLE001
            raise FirstRunError(f"first run: cannot fetch {sym} klines history from {rest_url}: {e}") from None
    timings["history_fetch_s"] = time.perf_counter() - t0
    folder = cfg.path("first-run-klines")
    write_klines_folder(folder, hist)
    e = cfg.engines
    argv = ["train", "--data", str(folder), "--registry", str(registry.root), "--timeframes", ",".join(missing),
            "--threads", str(e.first_run_threads or 1), "--lstm-max-rows", "5000"]
    say(f"first run (universe): {sum(len(k) for k in hist.values())} bars fetched in "
        f"{timings['history_fetch_s']:.1f} s; training `tradingd {' '.join(argv)}`")
    status("first run: training")
    t0 = time.perf_counter()
    try:
        pid = await _run_child(_universe_child, (argv, cfg.logging.level))
    except Exception as ex:  # noqa: BLE001
        raise FirstRunError(f"first-run universe training failed: {type(ex).__name__}: {ex}") from None
    timings["first_run_train_s"] = time.perf_counter() - t0
    say(f"first run (universe): trained {','.join(missing)} in {timings['first_run_train_s']:.1f} s "
        f"(child process {pid})")
    return hist


def write_klines_folder(folder: Any, hist: dict) -> None:
    """``SYMBOL-1m.csv.gz`` per symbol (the columns `tradingd train --data` reads)."""
    import gzip
    from pathlib import Path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sym, k in hist.items():
        tmp = folder / f".{sym}-1m.csv.gz.tmp"
        with gzip.open(tmp, "wt") as f:
            f.write("open_time_ms,open,high,low,close,volume\n")
            for row in zip((k.open_ns // 1_000_000).tolist(), k.open.tolist(), k.high.tolist(), k.low.tolist(),
                           k.close.tolist(), k.volume.tolist()):
                f.write("%d,%r,%r,%r,%r,%r\n" % row)
        os.replace(tmp, folder / f"{sym}-1m.csv.gz")


async def _run_child(target: Any, args: tuple) -> int:
    """``target(*args, conn)`` in a spawned child; returns its pid, raises RuntimeError with its message."""
    import multiprocessing

    from daemon.logs import current_format
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, name="tradingd-first-run-train", daemon=True,
                       args=(*args, current_format(), send))
    proc.start()
    send.close()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, proc.join)
    except asyncio.CancelledError:
        proc.terminate()
        await loop.run_in_executor(None, proc.join, 5.0)
        if proc.is_alive():
            proc.kill()
        raise
    result = recv.recv() if recv.poll() else ("error", f"training process exited with {proc.exitcode}")
    recv.close()
    if result[0] != "ok":
        raise RuntimeError(result[1])
    return int(result[1])


def _universe_child(argv: list[str], level: str, fmt: str, conn: Any) -> None:
    """Child process: `tradingd train --data` (research.cli_train); ``("ok", pid)`` or ``("error", message)``."""
    import argparse

    from daemon.logs import configure
    configure(level, fmt=fmt)
    try:
        from research import cli_train
        p = argparse.ArgumentParser(prog="tradingd train")
        cli_train.add_arguments(p)
        res = cli_train.train_universe(p.parse_args(argv[1:]))
        for tf, m in res["timeframes"].items():
            say(f"first run (universe): {tf} version {m['registry_version']}, weights "
                f"{ {k: round(v, 3) for k, v in m['ensemble']['weights'].items()} }, calibration slope "
                f"{m['calibration']['slope']:.3g}")
    except BaseException as e:  # noqa: BLE001 - reported to the daemon, which exits 3 with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    else:
        conn.send(("ok", os.getpid()))
    finally:
        conn.close()
