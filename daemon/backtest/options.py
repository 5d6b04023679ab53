"""Backtest options and walk-forward windows (pure: no I/O, no models).

Short files (:func:`fit_windows`): a walk-forward needs ``--train-days`` + ``--test-days`` of data. A shorter
file has both shrunk by the same factor (whole minutes; logged, in metrics.json ``info.windows_rule`` and the
report's warnings) as long as training keeps >= ``MIN_TRAIN_DAYS`` (3) days and the test window >= ``MIN_TEST_DAYS``
(1) day; shorter still, the command exits 2 naming the file and its length. With the defaults (30 + 7) a 30-day
file trains 24.3 days and trades 5.7; a file of 37 days or more runs exactly as before. A run that trades less than
``TRADED_SHARE_WARN`` (10 %) of the data's span (e.g. ``--train-days 30 --test-days 1`` on 31 days) says so in the
log, metrics.json ``info.coverage``/``info.warnings`` and the report.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgspec

from market.events import timeframe_ns
from market.filters import SymbolFilters

__all__ = ["BacktestOptions", "Window", "WindowRule", "DataTooShort", "fit_windows", "walk_forward_windows",
           "BTCUSDT_FILTERS", "default_filters", "MIN_TRAIN_DAYS", "MIN_TEST_DAYS", "TRADED_SHARE_WARN"]

_M = 60_000_000_000
_DAY = 86_400_000_000_000
MIN_TRAIN_DAYS = 3.0      # a short file's windows shrink no further than this (see fit_windows)
MIN_TEST_DAYS = 1.0
TRADED_SHARE_WARN = 0.10  # warn when the test windows cover less than this share of the data's span


# ------------------------------------------------------------------------------------------------ options
#: the simulated symbol's exchange filters when none are given (BTCUSDT-like: a klines file has no exchangeInfo)
BTCUSDT_FILTERS = SymbolFilters("BTCUSDT", tick_size=0.01, lot_step=0.00001, min_qty=0.00001, max_qty=9000.0,
                                min_notional=5.0)


def default_filters(symbol: str, **overrides: float) -> SymbolFilters:
    """:data:`BTCUSDT_FILTERS` for ``symbol``, with ``overrides`` (tick_size=..., lot_step=...) replaced."""
    return msgspec.structs.replace(BTCUSDT_FILTERS, symbol=symbol, **overrides)


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
    lstm_int8: str = "dynamic"      # how the INT8 LSTM is made per window when lstm_backend is onnxruntime-cpu-int8
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
