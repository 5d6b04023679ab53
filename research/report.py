"""OUT/metrics.json and OUT/index.html (IC over time, cumulative quantile returns, equity curves as PNGs)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from research.metrics import quantile_returns

__all__ = ["write_report", "plain"]


def plain(x):
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    return x


def _ts(open_ns: np.ndarray):
    return open_ns.astype("datetime64[ns]")


def _plots(out: Path, tf: str, ev: dict, open_ns: np.ndarray, fwd1: np.ndarray) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    x = _ts(open_ns)
    ser = ev["series"]
    # IC over time: rolling mean of the per-bar Rank IC
    fig, ax = plt.subplots(figsize=(10, 3.5))
    win = max(1, len(x) // 60)
    for m, s in ser.items():
        if "rank_ic" not in s:
            continue
        r = np.nan_to_num(s["rank_ic"], nan=0.0)
        roll = np.convolve(r, np.ones(win) / win, mode="same")
        ax.plot(x, roll, label=m, lw=1)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"{tf}: Rank IC, rolling mean over {win} bars (out of sample)")
    ax.legend(fontsize=7, ncol=4)
    f = f"ic_{tf}.png"
    fig.tight_layout()
    fig.savefig(out / f, dpi=90)
    plt.close(fig)
    files.append(f)
    # cumulative quantile returns of the ensemble (or the first model), next-bar returns
    key = "ensemble" if "ensemble" in ser else next(m for m in ser if "pred" in ser[m])
    qr = quantile_returns(ser[key]["pred"], fwd1, q=5)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for k in range(qr.shape[1]):
        ax.plot(x, np.cumsum(np.nan_to_num(qr[:, k])), label=f"Q{k + 1}", lw=1)
    ax.set_title(f"{tf}: cumulative next-bar log return per {key} quintile (Q5 = highest scores), before costs")
    ax.legend(fontsize=7)
    f = f"quantiles_{tf}.png"
    fig.tight_layout()
    fig.savefig(out / f, dpi=90)
    plt.close(fig)
    files.append(f)
    # equity curves
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for m, s in ser.items():
        eq = s["equity"]
        ax.plot(x, eq[1:], label=m, lw=1.5 if m in ("ensemble", "buy_and_hold") else 0.8)
    ax.set_title(f"{tf}: equity after costs (top-k long-only portfolio; buy-and-hold equal weight)")
    ax.legend(fontsize=7, ncol=4)
    f = f"equity_{tf}.png"
    fig.tight_layout()
    fig.savefig(out / f, dpi=90)
    plt.close(fig)
    files.append(f)
    return files


def write_report(out: Path, metrics: dict, evals: dict, results: dict, extra_html: str = "") -> None:
    """``extra_html`` goes first in the body (the live pipeline's section, written by daemon.backtest.universe)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(plain(metrics), indent=1, sort_keys=False))
    pngs = []
    for tf, ev in evals.items():
        r = results[tf]
        sl = slice(r.test_lo, r.test_hi)
        pngs += _plots(out, tf, ev, r.open_ns[sl], r.fwd1[sl])
    rows = []
    for tf, models in metrics["signal"].items():
        for m, d in models.items():
            s = metrics["strategies"][tf][m]
            rows.append(f"<tr><td>{tf}</td><td>{html.escape(m)}</td>" + "".join(
                f"<td>{_f(d.get(k))}</td>" for k in ("ic", "rank_ic", "rank_ic_std", "icir", "rank_icir", "hit_rate",
                                                    "tmb_per_bar", "turnover")) +
                "".join(f"<td>{_f(s.get(k))}</td>" for k in ("return_pct", "sharpe", "max_drawdown_pct", "trades")) +
                "</tr>")
        b = metrics["baselines_by_tf"][tf]["buy_and_hold"]
        rows.append(f"<tr><td>{tf}</td><td>buy_and_hold</td>" + "<td></td>" * 8 +
                    "".join(f"<td>{_f(b.get(k))}</td>" for k in ("return_pct", "sharpe", "max_drawdown_pct",
                                                                 "trades")) + "</tr>")
    head = ("<tr><th>tf</th><th>model</th><th>IC</th><th>Rank IC</th><th>±seeds</th><th>ICIR</th><th>Rank ICIR</th>"
            "<th>hit</th><th>top-bottom/bar</th><th>top-q turnover</th><th>return %</th><th>Sharpe</th>"
            "<th>max DD %</th><th>trades</th></tr>")
    st = metrics["strategy"]
    body = (f"<h1>tradingd universe backtest</h1><p>{html.escape(metrics['info'].get('note', ''))}</p>{extra_html}"
            f"<h2>Strategy ({st.get('timeframe')} {st.get('model')})</h2>"
            f"<pre>{html.escape(json.dumps(plain(st), indent=1))}"
            f"</pre><h2>Signal and strategies (out of sample, after costs)</h2><table border=1 cellspacing=0>"
            f"{head}{''.join(rows)}</table>" + "".join(f"<p><img src='{p}'></p>" for p in pngs))
    (out / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>tradingd universe "
                                    f"backtest</title></head><body>{body}</body></html>")


def _f(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))
