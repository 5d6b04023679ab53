"""Whether an extra model kind joins the default set, decided on the FIRST outer training window only.

The panel is cut at the end of the first outer training window (first bar with features + ``--train-days``, as
``tradingd hpo`` does: no outer test bar is read); inside it a walk-forward of ``--inner-train-days`` /
``--inner-test-days`` scores each model out of sample. Rule (fixed before running it): a kind joins the default set
when its inner Rank IC beats its parent's (xgboost_ft vs xgboost, lstm_emb vs lstm) by at least ``--min-gain`` and
its Rank ICIR is not lower.

    python benchmarks/model_choice.py --data ../shared/data/universe/binance-spot-1h --threads 1
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from research.dataset import panel_features
from research.hpo import hpo_data_end
from research.params import params_for
from research.universe import load_universe
from research.walkforward import WFOptions, evaluate, run_timeframe

PARENT = {"xgboost_ft": "xgboost", "lstm_emb": "lstm"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--timeframes", default="")
    ap.add_argument("--models", default="xgboost,xgboost_ft,lstm,lstm_emb")
    ap.add_argument("--train-days", type=float, default=WFOptions.train_days)
    ap.add_argument("--inner-train-days", type=float, default=30)
    ap.add_argument("--inner-test-days", type=float, default=7)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-gain", type=float, default=0.002)
    a = ap.parse_args()
    uni = load_universe(a.data, tuple(x for x in a.timeframes.split(",") if x) or None)
    models = tuple(a.models.split(","))
    out = {}
    for tf, panel in uni.panels.items():
        t0 = time.perf_counter()
        pf = panel_features(panel)
        end = hpo_data_end(pf, WFOptions(train_days=a.train_days))
        cut = replace(pf, open_ns=pf.open_ns[:end], X=pf.X[:end], close=pf.close[:end])
        prm = params_for(tf, {}, threads=a.threads)
        opts = WFOptions(train_days=a.inner_train_days, test_days=a.inner_test_days, models=models, seeds=a.seeds)
        ev = evaluate(run_timeframe(cut, prm, opts), opts)
        sig = {m: {k: ev["signal"][m][k] for k in ("rank_ic", "rank_icir")} for m in models}
        join = {m: bool(sig[m]["rank_ic"] >= sig[p]["rank_ic"] + a.min_gain and
                        sig[m]["rank_icir"] >= sig[p]["rank_icir"])
                for m, p in PARENT.items() if m in sig and p in sig}
        out[tf] = {"data_end_ns": int(pf.open_ns[end - 1]), "inner_signal": sig, "joins_default": join,
                   "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
