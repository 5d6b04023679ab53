"""Klines loading (bad-input rule of issue #6), resampling with BarBuilder's rules, bar <-> klines conversion."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.bars import BarBuilder
from market.events import Bar, Trade, timeframe_ns
from engines.data import (Klines, KlinesError, bars_to_klines, klines_to_bars, load_klines_csv, resample,
                          symbol_from_name)

M = 60_000_000_000
HDR = "open_time_ms,open,high,low,close,volume\n"
T0 = 1_747_699_200_000  # 2025-05-20 00:00 UTC, ms


def write(tmp_path: Path, rows: list[str], name="X_USDT-1m_test.csv", gz=False, header=HDR) -> Path:
    text = header + "".join(r + "\n" for r in rows)
    p = tmp_path / (name + (".gz" if gz else ""))
    if gz:
        with gzip.open(p, "wt") as fh:
            fh.write(text)
    else:
        p.write_text(text)
    return p


def row(i, o=100.0, h=101.0, l=99.0, c=100.5, v=2.0, t0=T0):
    return f"{t0 + i * 60_000},{o},{h},{l},{c},{v}"


# ------------------------------------------------------------------------------------------------ real file
def test_real_btc_klines_load(btc_klines_path):
    k = load_klines_csv(btc_klines_path)
    assert len(k) == 130_708 and k.symbol == "BTCUSDT" and k.timeframe == "1m"
    assert k.filled == 0 and k.duplicates == 0 and k.is_contiguous()
    assert k.open_ns[0] == 1_747_699_200_000 * 1_000_000
    assert (k.open[0], k.high[0], k.low[0], k.close[0], k.volume[0]) == (105573.73, 105597.1, 105554.31, 105554.32,
                                                                        10.82647)
    assert k.open_ns.dtype == np.int64 and k.close.dtype == np.float64
    with pytest.raises(ValueError):
        k.close[0] = 1.0  # read-only columns


def test_real_resample_matches_hand_aggregation(btc_klines_path):
    k = load_klines_csv(btc_klines_path)
    for tf, f in (("5m", 5), ("15m", 15), ("1h", 60)):
        r = resample(k, tf)
        assert len(r) == len(k) // f and r.is_contiguous() and r.timeframe == tf
        for i in (0, 1, len(r) // 2, len(r) - 1):
            sl = slice(i * f, (i + 1) * f)
            v = 0.0
            for x in k.volume[sl]:
                v += x
            assert r.open_ns[i] == k.open_ns[i * f]
            assert (r.open[i], r.high[i], r.low[i], r.close[i], r.volume[i]) == (
                k.open[sl][0], k.high[sl].max(), k.low[sl].min(), k.close[sl][-1], v)


# ------------------------------------------------------------------------------------------------ bad input
def test_plain_and_gzip_load_the_same(tmp_path):
    rows = [row(i) for i in range(5)]
    a = load_klines_csv(write(tmp_path, rows))
    b = load_klines_csv(write(tmp_path, rows, gz=True))
    assert a == b and len(a) == 5 and a.symbol == "XUSDT"


def test_zero_volume_allowed(tmp_path):
    k = load_klines_csv(write(tmp_path, [row(0), row(1, v=0.0), row(2)]))
    assert k.volume.tolist() == [2.0, 0.0, 2.0] and k.filled == 0


def test_missing_minutes_filled_flat_at_previous_close_and_counted(tmp_path):
    k = load_klines_csv(write(tmp_path, [row(0, c=100.25), row(3, o=100.0, c=100.75), row(4)]))
    assert k.filled == 2 and len(k) == 5 and k.is_contiguous()
    for i in (1, 2):
        assert (k.open[i], k.high[i], k.low[i], k.close[i], k.volume[i]) == (100.25, 100.25, 100.25, 100.25, 0.0)
    assert k.close[3] == 100.75 and k.volume[3] == 2.0


def test_exact_duplicates_dropped_and_counted(tmp_path):
    k = load_klines_csv(write(tmp_path, [row(0), row(1), row(1), row(1), row(2)]))
    assert len(k) == 3 and k.duplicates == 2


@pytest.mark.parametrize("rows, line, needle", [
    ([row(0), row(2), row(1)], 4, "not sorted"),
    ([row(0), row(1), row(1, v=3.0)], 4, "duplicated open_time_ms"),
    ([row(0), row(1, c=float("nan"))], 3, "NaN"),
    ([row(0), row(1, v=float("inf"))], 3, "NaN or infinite"),
    ([row(0), row(1, v=-1.0)], 3, "negative volume"),
    ([row(0), row(1), row(2, h=98.0)], 4, "high < low"),
    ([row(0), row(1, o=0.0, l=0.0)], 3, "price <= 0"),
    ([row(0), row(1, c=200.0)], 3, "outside [low, high]"),
    ([row(0), row(1) + ",7"], 3, "expected 6"),
    ([row(0), "abc,1,2,0.5,1,1"], 3, "not a number"),
    ([row(0), f"{T0 + 90_000},100,101,99,100,1"], 3, "not aligned"),
    ([row(0), f"{T0 + 60_000}.5,100,101,99,100,1"], 3, "integer"),
])
def test_bad_rows_refused_with_the_line(tmp_path, rows, line, needle):
    p = write(tmp_path, rows)
    with pytest.raises(KlinesError) as ei:
        load_klines_csv(p)
    assert f"{p}:{line}:" in str(ei.value) and needle in str(ei.value)


def test_bad_header_and_empty_files(tmp_path):
    with pytest.raises(KlinesError, match=":1: expected the header"):
        load_klines_csv(write(tmp_path, [row(0)], header="time,o,h,l,c,v\n"))
    with pytest.raises(KlinesError, match="no rows"):
        load_klines_csv(write(tmp_path, []))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(KlinesError, match="empty file"):
        load_klines_csv(tmp_path / "e.csv")
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress((HDR + row(0) + "\n").encode())[:-12])
    with pytest.raises(KlinesError, match="cannot read"):
        load_klines_csv(tmp_path / "t.csv.gz")


def test_timeframe_from_name_or_step(tmp_path):
    p = write(tmp_path, [f"{T0 + i * 300_000},1,1,1,1,1" for i in range(4)], name="data.csv")
    k = load_klines_csv(p)
    assert k.timeframe == "5m" and k.symbol == ""
    assert load_klines_csv(p, symbol="ABC", timeframe="1m").filled == 12


@pytest.mark.parametrize("name, symbol", [
    ("BTC_USDT-1m_2025-05-20_2025-08-18.csv.gz", "BTCUSDT"), ("BTCUSDT-5m.csv.gz", "BTCUSDT"),
    ("ethusdt.csv", "ETHUSDT"), ("ETH-BTC-1h.csv", "ETHBTC"), ("BNBFDUSD-1m-2025-01.csv", "BNBFDUSD"),
    ("eth.csv", ""), ("usdt.csv", ""), ("data.csv", ""), ("klines-1m.csv.gz", "")])
def test_symbol_from_name(name, symbol):
    """A name that names a pair with a known quote asset is parsed; one that does not gives "" (callers then ask
    for the symbol: eth.csv is not BTCUSDT)."""
    assert symbol_from_name(name) == symbol


def test_symbol_and_timeframe_from_a_binance_style_name(tmp_path):
    p = write(tmp_path, [f"{T0 + i * 300_000},1,1,1,1,1" for i in range(4)], name="BTCUSDT-5m.csv")
    k = load_klines_csv(p)
    assert (k.symbol, k.timeframe) == ("BTCUSDT", "5m")


# ------------------------------------------------------------------------------------------------ resample
def test_resample_leading_partial_kept_trailing_incomplete_dropped():
    ts = (np.arange(3, 13, dtype=np.int64)) * M  # minutes 3..12
    vals = np.arange(1.0, 11.0)
    k = Klines(ts, vals, vals + 0.5, vals - 0.5, vals + 0.25, vals)
    r = resample(k, "5m")
    assert r.open_ns.tolist() == [0, 5 * M]  # [0,5) partial (3,4), [5,10) full; [10,15) incomplete: dropped
    assert (r.open[0], r.high[0], r.low[0], r.close[0], r.volume[0]) == (1.0, 2.5, 0.5, 2.25, 3.0)
    assert resample(k, "5m", drop_incomplete_last=False).open_ns.tolist() == [0, 5 * M, 10 * M]
    with pytest.raises(KlinesError, match="multiple"):
        resample(r, "1m")
    with pytest.raises(KlinesError, match="gaps"):
        resample(Klines(np.array([0, 2 * M]), *[np.ones(2)] * 5), "5m")


def _trades_from(draw_steps, prices, qtys, makers):
    ts = 1_700_000_000 * 10**9 + 7
    out = []
    for i, (s, p, q, m) in enumerate(zip(draw_steps, prices, qtys, makers)):
        ts += s
        out.append(Trade("BTCUSDT", i, p, q, m, ts, ts))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400 * 10**9), st.floats(50.0, 150.0), st.floats(0.0, 3.0),
                          st.booleans()), min_size=2, max_size=300))
def test_resample_agrees_with_barbuilder_on_trade_streams(rows):
    trades = _trades_from(*zip(*rows))
    assert_builder_and_resample_agree(trades)


def assert_builder_and_resample_agree(trades):
    b = BarBuilder("BTCUSDT", ("1m", "5m", "15m", "1h"))
    out: dict[str, list[Bar]] = {}
    for t in trades:
        for bar in b.on_trade(t):
            out.setdefault(bar.timeframe, []).append(bar)
    if "1m" not in out:
        return
    k1 = bars_to_klines(out["1m"])
    assert k1.is_contiguous()
    for tf in ("5m", "15m", "1h"):
        r = resample(k1, tf)
        if tf in out:
            assert r == bars_to_klines(out[tf])
        else:
            assert len(r) == 0


def test_resample_agrees_with_barbuilder_on_real_trades(recorded_trades):
    assert_builder_and_resample_agree(recorded_trades)


# ------------------------------------------------------------------------------------------------ conversions
def test_bars_klines_round_trip_and_errors():
    bars = [Bar("ETHUSDT", "5m", i * 5 * M, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 10.0 * i) for i in range(4)]
    k = bars_to_klines(bars)
    assert (k.symbol, k.timeframe, len(k)) == ("ETHUSDT", "5m", 4)
    assert klines_to_bars(k) == bars
    assert k[1:3] == bars_to_klines(bars[1:3])
    with pytest.raises(KlinesError, match="mixed"):
        bars_to_klines(bars + [Bar("BTCUSDT", "5m", 99 * M, 1, 1, 1, 1, 1)])
    with pytest.raises(KlinesError, match="increasing"):
        bars_to_klines(bars[::-1])
    with pytest.raises(KlinesError, match="no bars"):
        bars_to_klines([])
    with pytest.raises(KlinesError, match="expected a 1-d array"):
        Klines(np.zeros(3, dtype=np.int64), *[np.zeros(2)] * 5)
    with pytest.raises(ValueError, match="unknown timeframe"):
        Klines(np.zeros(1, dtype=np.int64), *[np.zeros(1)] * 5, timeframe="7m")


def test_klines_does_not_freeze_callers_arrays():
    a = np.arange(3.0)
    Klines(np.arange(3, dtype=np.int64) * M, a, a, a, a, a)
    a[0] = 5.0  # still writeable
    assert timeframe_ns("1m") == M
