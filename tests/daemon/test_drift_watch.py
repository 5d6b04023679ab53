"""daemon.drift.DriftWatch's P&L path: closed trades in the optimizer's performance record (the real optimizer)
feed the per-trade P&L detector; its decay shows in the gauge and /status and asks for ONE retrain (reason "pnl")
per rate-limit interval. The feature/prediction path runs end to end in tests/daemon/test_app_drift.py."""
from __future__ import annotations

import numpy as np

from daemon.config import Config, replace
from daemon.drift import DriftWatch
from daemon.metrics import Metrics
from strategies.optimizer import DollarProfitOptimizer
from strategies.performance import ClosedTrade
from tests.daemon.harness import metric


def test_pnl_decay_asks_for_one_rate_limited_retrain(btc_klines_path, tmp_path):
    from engines.data import load_klines_csv
    k = load_klines_csv(btc_klines_path)
    c = np.asarray(k.close)
    cfg = replace(Config(), drift={"retrain_min_interval_minutes": 60.0})
    opt = DollarProfitOptimizer(cfg.optimizer, cfg.risk, filters={}, fee_rate=0.001, timeframes=("1m",),
                                starting_equity=1e5)
    asked: list[tuple[str, dict]] = []
    now = [0.0]
    m = Metrics()
    w = DriftWatch(cfg, m, registry=None, engine_sets={}, optimizer=opt,
                   request_retrain=lambda reason, detail: asked.append((reason, detail)) or {"ok": True},
                   clock=lambda: now[0])
    row = np.zeros(13)
    first = None
    for n, i in enumerate(range(1000, 1000 + 15 * 400, 15)):  # 15-bar momentum trades on real BTC bars
        d = 1 if c[i] > c[i - 15] else -1
        exit_px = c[i + 15] * (1 - 0.004 * d if n >= 200 else 1)  # from trade 200 on, 40 bp worse exits
        opt.performance.update_performance(ClosedTrade("BTCUSDT", "1m", d, 0.1, c[i], exit_px, i, i + 15,
                                                       fees=0.0002 * c[i] * 0.1))
        w.on_bar("1m", "BTCUSDT", row, {}, c[i + 15])
        now[0] += 15 * 60
        if asked and first is None:
            first = n
        if n == 199:
            assert not asked and w.status()["pnl"]["BTCUSDT/1m"]["change"] is False
    text = m.render().decode()
    assert metric(text, "tradingd_drift_pnl_change", symbol="BTCUSDT", timeframe="1m", model="trades") == 1
    st = w.status()["pnl"]["BTCUSDT/1m"]
    assert st["change"] and st["trades"] == 400
    # one request when it rose, then one per hour of alarm (200 trades x 15 min = 50 h: at most 51)
    assert asked and all(r == "pnl" for r, _ in asked) and len(asked) <= 51
    assert 200 <= first <= 260, first  # within 60 trades of the decay
    assert asked[0][1]["symbol"] == "BTCUSDT" and asked[0][1]["model"] == "trades"
