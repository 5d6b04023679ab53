"""Backtest report: metrics from the equity curve and the trade list, trades.csv, PNG plots and index.html.

Pure numbers first (:func:`equity_metrics`, :func:`trade_metrics`, :class:`TradeLedger`), files last
(:func:`write_report`). Definitions (one place; metrics.json repeats them under ``definitions``):

* The equity curve is marked to market at every bar close (cash + position x close), so drawdowns and the
  Sharpe ratio see open positions, not only closed trades.
* Per-bar simple returns ``r_i = E_i / E_{i-1} - 1``. Crypto trades 24/7, so a year is 365 days:
  ``periods_per_year = 365 * 86400 / bar_seconds`` (525,600 for 1m bars, so Sharpe is annualised by
  ``sqrt(365*24*60)``).
* total return ``E_T / E_0 - 1``; annualised return ``(E_T / E_0) ** (periods_per_year / n) - 1`` with n
  the number of returns.
* Sharpe ``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)`` (risk-free rate 0).
* Sortino ``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(periods_per_year)`` (downside deviation over all periods).
* max drawdown ``max_t (1 - E_t / max_{s<=t} E_s)``; its duration is the time from the peak before the
  deepest trough to the recovery of that peak (to the end of the run if never recovered); ``longest_underwater``
  is the longest such stretch of any drawdown.
* A trade is one round trip of a symbol's position from flat to flat (a fill that crosses zero closes one trade
  and opens the next, its quantity and fee split pro rata). Trade P&L = sell value - buy value - fees, so with
  every position closed, ``sum(trade pnl) == final equity - starting equity``.
* Slippage paid = sum over fills of ``|fill price - mid| x qty`` where ``mid`` is the book mid when the order
  was placed: half the spread plus any depth walked. Fees are the broker's fees. Both are costs already in
  the equity curve; they are reported, never added back.
* exposure = fraction of bars that end with a non-zero position.
"""
from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

__all__ = ["FillRecord", "TradeRecord", "TradeLedger", "RunResult", "ReportData", "periods_per_year",
           "equity_metrics", "trade_metrics", "run_metrics", "calibration_table", "write_report",
           "TRADES_CSV_FIELDS"]

SECONDS_PER_YEAR = 365 * 86400


# ------------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class FillRecord:
    """One fill as the report needs it: the broker's Fill plus the mid at order time and the order's tags."""

    ts: int
    symbol: str
    side: int          # +1 buy / -1 sell
    price: float
    qty: float
    fee: float
    mid: float         # book mid when the order was placed (slippage reference)
    timeframe: str = ""
    reason: str = ""   # entry / stop / take_profit / peak / reversal / time / flatten / end_of_backtest / ...
    client_order_id: str = ""

    @property
    def slippage(self) -> float:
        return abs(self.price - self.mid) * self.qty if math.isfinite(self.mid) and self.mid > 0 else 0.0


@dataclass(frozen=True)
class TradeRecord:
    symbol: str
    timeframe: str
    direction: int     # +1 long / -1 short
    qty: float         # largest absolute position during the trade
    entry_ns: int
    exit_ns: int
    entry_price: float  # VWAP of the fills that opened/increased the position
    exit_price: float   # VWAP of the fills that reduced it
    gross_pnl: float    # sell value - buy value
    fees: float
    slippage: float
    pnl: float          # gross_pnl - fees
    exit_reason: str
    n_fills: int


TRADES_CSV_FIELDS = tuple(f.name for f in fields(TradeRecord))


@dataclass
class _Open:
    direction: int
    entry_ns: int
    timeframe: str
    qty: float = 0.0
    max_qty: float = 0.0
    in_qty: float = 0.0
    in_value: float = 0.0
    out_qty: float = 0.0
    out_value: float = 0.0
    buy_value: float = 0.0
    sell_value: float = 0.0
    fees: float = 0.0
    slippage: float = 0.0
    n_fills: int = 0


class TradeLedger:
    """Builds round-trip trades from fills (flat -> flat per symbol). Independent of the strategy's own
    bookkeeping, so the report checks the strategy rather than repeating it."""

    def __init__(self) -> None:
        self._open: dict[str, _Open] = {}
        self.trades: list[TradeRecord] = []
        self.fills: list[FillRecord] = []

    def position(self, symbol: str) -> float:
        o = self._open.get(symbol)
        return o.direction * o.qty if o else 0.0

    def on_fill(self, f: FillRecord) -> list[TradeRecord]:
        self.fills.append(f)
        closed: list[TradeRecord] = []
        qty, fee, slip = f.qty, f.fee, f.slippage
        while qty > 0:
            o = self._open.get(f.symbol)
            if o is None:
                o = self._open[f.symbol] = _Open(f.side, f.ts, f.timeframe)
            if f.side == o.direction:      # opens / increases
                take = qty
                o.qty += take
                o.max_qty = max(o.max_qty, o.qty)
                o.in_qty += take
                o.in_value += take * f.price
            else:                          # reduces (maybe crossing zero: the rest opens the next trade)
                take = min(qty, o.qty)
                o.qty -= take
                o.out_qty += take
                o.out_value += take * f.price
            share = take / f.qty
            if f.side > 0:
                o.buy_value += take * f.price
            else:
                o.sell_value += take * f.price
            o.fees += fee * share
            o.slippage += slip * share
            o.n_fills += 1
            qty -= take
            if o.qty <= 1e-12 * max(o.max_qty, 1e-300) and o.out_qty > 0:
                gross = o.sell_value - o.buy_value
                t = TradeRecord(f.symbol, o.timeframe, o.direction, o.max_qty, o.entry_ns, f.ts,
                                o.in_value / o.in_qty, o.out_value / o.out_qty, gross, o.fees, o.slippage,
                                gross - o.fees, f.reason, o.n_fills)
                self.trades.append(t)
                closed.append(t)
                del self._open[f.symbol]
            if take == 0:  # defensive: a zero-size open position cannot absorb a reducing fill
                break
        return closed

    def open_symbols(self) -> list[str]:
        return list(self._open)


# ------------------------------------------------------------------------------------------------ metrics
def periods_per_year(bar_seconds: float) -> float:
    return SECONDS_PER_YEAR / bar_seconds


def _f(x: float) -> float | None:
    """JSON-safe float: None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def equity_metrics(equity: Sequence[float] | np.ndarray, ts_ns: Sequence[int] | np.ndarray,
                   bar_seconds: float, position: np.ndarray | None = None) -> dict:
    """Return/risk metrics of an equity curve sampled every ``bar_seconds`` (see the module docstring)."""
    e = np.asarray(equity, np.float64)
    ts = np.asarray(ts_ns, np.int64)
    if e.ndim != 1 or len(e) < 2 or len(ts) != len(e):
        raise ValueError("equity_metrics needs >= 2 equity points with one timestamp each")
    if not (np.isfinite(e).all() and (e > 0).all()):
        raise ValueError("equity must be finite and > 0")
    ppy = periods_per_year(bar_seconds)
    r = e[1:] / e[:-1] - 1.0
    n = len(r)
    total = e[-1] / e[0] - 1.0
    log_growth = math.log(e[-1] / e[0]) * ppy / n
    ann = math.expm1(log_growth) if log_growth < 700 else math.inf  # short toy curves explode; None in JSON
    sd = r.std(ddof=1) if n > 1 else math.nan
    sharpe = r.mean() / sd * math.sqrt(ppy) if (n > 1 and sd > 0) else math.nan
    dd_dev = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    sortino = r.mean() / dd_dev * math.sqrt(ppy) if dd_dev > 0 else math.nan
    peak = np.maximum.accumulate(e)
    dd = 1.0 - e / peak
    i_trough = int(np.argmax(dd))
    max_dd = float(dd[i_trough])
    # peak before the trough, and the recovery after it
    i_peak = int(np.flatnonzero(e[:i_trough + 1] == peak[i_trough])[0]) if max_dd > 0 else i_trough
    rec = np.flatnonzero(e[i_trough:] >= peak[i_trough]) if max_dd > 0 else np.array([0])
    i_rec = i_trough + int(rec[0]) if len(rec) else len(e) - 1
    dd_dur_s = (int(ts[i_rec]) - int(ts[i_peak])) / 1e9 if max_dd > 0 else 0.0
    # longest underwater stretch of any drawdown
    under = dd > 0
    longest, start = 0.0, None
    for i, u in enumerate(under):
        if u and start is None:
            start = i - 1 if i > 0 else 0
        if start is not None and (not u or i == len(e) - 1):
            end = i
            longest = max(longest, (int(ts[end]) - int(ts[start])) / 1e9)
            start = None
    out = {
        "start_equity": float(e[0]), "end_equity": float(e[-1]), "pnl": float(e[-1] - e[0]),
        "total_return": float(total), "annualised_return": _f(ann),
        "sharpe": _f(sharpe), "sortino": _f(sortino),
        "volatility_annualised": _f(sd * math.sqrt(ppy)) if n > 1 else None,
        "max_drawdown": max_dd,
        "max_drawdown_peak_ns": int(ts[i_peak]), "max_drawdown_trough_ns": int(ts[i_trough]),
        "max_drawdown_duration_s": float(dd_dur_s), "max_drawdown_recovered": bool(len(rec) > 0 and max_dd > 0),
        "longest_underwater_s": float(longest),
        "bars": int(len(e)), "bar_seconds": float(bar_seconds), "periods_per_year": float(ppy),
    }
    if position is not None:
        pos = np.asarray(position, np.float64)
        out["exposure"] = float(np.mean(pos != 0.0)) if len(pos) else 0.0
    return out


def trade_metrics(trades: Sequence[TradeRecord], fills: Sequence[FillRecord] = ()) -> dict:
    """Trade-list metrics: count, win rate, profit factor, average trade, fees and slippage."""
    pnl = np.array([t.pnl for t in trades], np.float64)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    gross_loss = -losses.sum()
    pf = wins.sum() / gross_loss if gross_loss > 0 else (math.inf if len(wins) else math.nan)
    out = {
        "trades": int(len(pnl)),
        "win_rate": _f(len(wins) / len(pnl)) if len(pnl) else None,
        "profit_factor": _f(pf),
        "profit_factor_note": "inf (no losing trade)" if math.isinf(pf) else None,
        "avg_trade": _f(pnl.mean()) if len(pnl) else None,
        "avg_win": _f(wins.mean()) if len(wins) else None,
        "avg_loss": _f(losses.mean()) if len(losses) else None,
        "trade_pnl_sum": float(pnl.sum()),
        "gross_pnl_sum": float(sum(t.gross_pnl for t in trades)),
        "fees_paid": float(sum(f.fee for f in fills)) if fills else float(sum(t.fees for t in trades)),
        "slippage_paid": float(sum(f.slippage for f in fills)) if fills else float(sum(t.slippage for t in trades)),
        "fills": int(len(fills)),
        "avg_hold_s": _f(np.mean([(t.exit_ns - t.entry_ns) / 1e9 for t in trades])) if trades else None,
    }
    if out["profit_factor_note"] is None:
        del out["profit_factor_note"]
    return out


def run_metrics(run: RunResult, bar_seconds: float) -> dict:
    """Equity + trade metrics of one run, and the same trade metrics per timeframe."""
    m = equity_metrics(run.equity, run.ts_ns, bar_seconds, run.position)
    m.update(trade_metrics(run.trades, run.fills))
    per_tf: dict[str, dict] = {}
    for tf in sorted({t.timeframe for t in run.trades}, key=_tf_key):
        tt = [t for t in run.trades if t.timeframe == tf]
        ff = [f for f in run.fills if f.timeframe == tf]
        per_tf[tf or "?"] = trade_metrics(tt, ff)
    m["per_timeframe"] = per_tf
    return m


def _tf_key(tf: str) -> float:
    from market.events import TIMEFRAME_SECONDS
    return TIMEFRAME_SECONDS.get(tf, 1e12)


def calibration_table(p: np.ndarray, y: np.ndarray, bins: Sequence[float] | None = None) -> list[dict]:
    """Predicted P(up) in bins vs the realised up-rate (y in {0, 1}; other values are ignored)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(p) & ((y == 0) | (y == 1))
    p, y = p[ok], y[ok]
    edges = np.asarray(bins if bins is not None else np.linspace(0, 1, 11), np.float64)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        m = idx == b
        if m.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                        "mean_p": float(p[m].mean()), "up_rate": float(y[m].mean())})
    return out


# ------------------------------------------------------------------------------------------------ containers
@dataclass
class RunResult:
    """One simulated account over the bars: equity marked at every bar close, its fills and trades."""

    name: str
    ts_ns: np.ndarray       # bar close times (ns)
    equity: np.ndarray
    position: np.ndarray    # signed position after each bar (base qty)
    fills: list[FillRecord] = field(default_factory=list)
    trades: list[TradeRecord] = field(default_factory=list)


@dataclass
class ReportData:
    symbol: str
    bar_seconds: float
    price_ts: np.ndarray              # bar close times (ns)
    price: np.ndarray                 # close
    runs: dict[str, RunResult]        # "strategy" first; then "buy_and_hold", baselines
    # calibration[tf][model] = (p_up, label) for every prediction the backtest made
    calibration: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # settings, walk-forward windows, timing, counters


# ------------------------------------------------------------------------------------------------ files
def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return _f(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def compute_metrics(data: ReportData) -> dict:
    runs = {name: run_metrics(r, data.bar_seconds) for name, r in data.runs.items()}
    calib = {tf: {kind: calibration_table(p, y) for kind, (p, y) in kinds.items()}
             for tf, kinds in data.calibration.items()}
    return {
        "symbol": data.symbol,
        "start_ns": int(data.price_ts[0]), "end_ns": int(data.price_ts[-1]),
        "annualisation": f"per-bar returns every {data.bar_seconds:g} s, 365-day year: Sharpe/Sortino x "
                         f"sqrt({periods_per_year(data.bar_seconds):.0f}), annualised return compounds "
                         f"{periods_per_year(data.bar_seconds):.0f} periods",
        "definitions": __doc__.split("Definitions", 1)[1].strip(),
        "runs": runs,
        "calibration": calib,
        "info": data.info,
    }


def write_trades_csv(path: Path, trades: Iterable[TradeRecord]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TRADES_CSV_FIELDS)
        for t in trades:
            d = asdict(t)
            w.writerow([repr(float(d[k])) if isinstance(d[k], (float, np.floating)) else d[k]
                        for k in TRADES_CSV_FIELDS])


def _plots(out: Path, data: ReportData, metrics: dict) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def dt(ns):
        return np.asarray(ns, "datetime64[ns]").astype("datetime64[ms]").astype(object)

    made: list[tuple[str, str]] = []
    colors = {"strategy": "tab:blue", "buy_and_hold": "tab:gray", "baseline_momentum": "tab:orange",
              "flat": "black"}

    # 1. equity and drawdown
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for name, r in data.runs.items():
        step = max(1, len(r.equity) // 4000)
        t = dt(r.ts_ns[::step])
        ax1.plot(t, r.equity[::step], lw=1.1, label=f"{name} ({metrics['runs'][name]['total_return']:+.2%})",
                 color=colors.get(name))
        peak = np.maximum.accumulate(r.equity)
        ax2.plot(t, -(1 - r.equity / peak)[::step] * 100, lw=1, color=colors.get(name))
    ax1.set_ylabel("equity (quote, marked each bar)")
    ax1.set_title(f"{data.symbol}: equity (fees, spread and slippage included)")
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    fig.tight_layout()
    fig.savefig(out / "equity_drawdown.png", dpi=90)
    plt.close(fig)
    made.append(("equity_drawdown.png", "Equity (marked to market every bar) and drawdown, strategy vs baselines"))

    # 2. price with entries/exits
    strat = data.runs.get("strategy")
    fig, ax = plt.subplots(figsize=(11, 5))
    step = max(1, len(data.price) // 6000)
    ax.plot(dt(data.price_ts[::step]), data.price[::step], lw=0.7, color="0.35", label="close")
    if strat is not None and strat.trades:
        tr = strat.trades
        for d, mk, col, lab in ((1, "^", "tab:green", "long entry"), (-1, "v", "tab:red", "short entry")):
            sel = [t for t in tr if t.direction == d]
            if sel:
                ax.scatter(dt([t.entry_ns for t in sel]), [t.entry_price for t in sel], marker=mk, s=22,
                           color=col, label=lab, zorder=3)
        win = [t for t in tr if t.pnl > 0]
        loss = [t for t in tr if t.pnl <= 0]
        if win:
            ax.scatter(dt([t.exit_ns for t in win]), [t.exit_price for t in win], marker="x", s=18,
                       color="tab:blue", label="exit (win)", zorder=3)
        if loss:
            ax.scatter(dt([t.exit_ns for t in loss]), [t.exit_price for t in loss], marker="x", s=18,
                       color="black", label="exit (loss)", zorder=3)
    ax.set_title(f"{data.symbol}: price with strategy entries and exits ({len(strat.trades) if strat else 0} trades)")
    ax.set_ylabel("price")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    fig.tight_layout()
    fig.savefig(out / "price_trades.png", dpi=90)
    plt.close(fig)
    made.append(("price_trades.png", "Close price with the strategy's entries (triangles) and exits (crosses)"))

    # 3. P&L by timeframe
    per = metrics["runs"].get("strategy", {}).get("per_timeframe", {})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if per:
        tfs = list(per)
        x = np.arange(len(tfs))
        gross = [per[t]["gross_pnl_sum"] for t in tfs]
        fees = [-per[t]["fees_paid"] for t in tfs]
        net = [per[t]["trade_pnl_sum"] for t in tfs]
        ax.bar(x - 0.27, gross, 0.27, label="gross (before fees)", color="tab:blue")
        ax.bar(x, fees, 0.27, label="fees", color="tab:red")
        ax.bar(x + 0.27, net, 0.27, label="net", color="tab:green")
        ax.set_xticks(x, [f"{t}\n{per[t]['trades']} trades" for t in tfs])
        ax.axhline(0, color="black", lw=0.8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trades", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("P&L (quote)")
    ax.set_title("Strategy P&L by timeframe (slippage is inside gross)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "pnl_by_timeframe.png", dpi=90)
    plt.close(fig)
    made.append(("pnl_by_timeframe.png", "Strategy P&L by the timeframe that opened the trade"))

    # 4. calibration
    if data.calibration:
        tfs = sorted(data.calibration, key=_tf_key)
        fig, axes = plt.subplots(1, len(tfs), figsize=(3.6 * len(tfs), 3.8), squeeze=False)
        for ax, tf in zip(axes[0], tfs):
            ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
            for kind, (p, y) in data.calibration[tf].items():
                rows = calibration_table(p, y)
                if rows:
                    ax.plot([r["mean_p"] for r in rows], [r["up_rate"] for r in rows], marker="o", ms=3,
                            label=f"{kind} (n={sum(r['n'] for r in rows)})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{tf}")
            ax.set_xlabel("predicted P(up)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        axes[0][0].set_ylabel("realised up-rate")
        fig.suptitle("Calibration on the traded (out-of-sample) windows: P(up) bins vs realised up-rate", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=90)
        plt.close(fig)
        made.append(("calibration.png", "Predicted P(up) (10 bins) vs realised up-rate over each model's label "
                                        "horizon, moves smaller than costs left out as in training"))
    return made


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.2f}"
    return html.escape(str(v))


_TABLE_ROWS = (("total_return", "total return"), ("annualised_return", "annualised return"),
               ("sharpe", "Sharpe (ann.)"), ("sortino", "Sortino (ann.)"), ("max_drawdown", "max drawdown"),
               ("max_drawdown_duration_s", "max DD duration (s)"), ("trades", "trades"), ("win_rate", "win rate"),
               ("profit_factor", "profit factor"), ("avg_trade", "average trade"), ("fees_paid", "fees paid"),
               ("slippage_paid", "slippage paid"), ("exposure", "exposure"), ("pnl", "P&L"),
               ("end_equity", "final equity"))


def _html(data: ReportData, metrics: dict, plots: list[tuple[str, str]]) -> str:
    runs = metrics["runs"]
    names = list(runs)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><td>{lab}</td>" + "".join(f"<td>{_fmt(runs[n].get(key))}</td>" for n in names) + "</tr>"
                   for key, lab in _TABLE_ROWS)
    per = runs.get("strategy", {}).get("per_timeframe", {})
    tf_rows = "".join(
        f"<tr><td>{html.escape(tf)}</td><td>{m['trades']}</td><td>{_fmt(m['trade_pnl_sum'])}</td>"
        f"<td>{_fmt(m['win_rate'])}</td><td>{_fmt(m['profit_factor'])}</td><td>{_fmt(m['avg_trade'])}</td>"
        f"<td>{_fmt(m['fees_paid'])}</td><td>{_fmt(m['slippage_paid'])}</td></tr>" for tf, m in per.items())
    imgs = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}'
                   f"</figcaption></figure>" for f, c in plots)
    info = html.escape(json.dumps(_jsonable(data.info), indent=1)[:20000])
    warn = "".join(f'<p class="warning"><b>Warning:</b> {html.escape(w)}</p>'
                   for w in data.info.get("warnings", ()))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tradingd backtest {html.escape(data.symbol)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>Backtest: {html.escape(data.symbol)}</h1>
<p>{html.escape(metrics['annualisation'])}. Costs (fees, spread, depth slippage) are always on.
Files: <a href="metrics.json">metrics.json</a>, <a href="trades.csv">trades.csv</a>.</p>
{warn}<h2>Metrics</h2><table><tr><th></th>{head}</tr>{rows}</table>
<h2>Strategy by timeframe</h2><table><tr><th>timeframe</th><th>trades</th><th>net P&amp;L</th><th>win rate</th>
<th>profit factor</th><th>avg trade</th><th>fees</th><th>slippage</th></tr>{tf_rows}</table>
<h2>Plots</h2>{imgs}
<h2>Run information</h2><pre>{info}</pre></body></html>
"""


def write_report(out_dir: str | Path, data: ReportData) -> dict:
    """Write metrics.json, trades.csv (strategy), <run>_trades.csv for the others, PNGs and index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(data)
    for name, r in data.runs.items():
        write_trades_csv(out / ("trades.csv" if name == "strategy" else f"trades_{name}.csv"), r.trades)
    plots = _plots(out, data, metrics)
    metrics["plots"] = [f for f, _ in plots]
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    (out / "index.html").write_text(_html(data, metrics, plots))
    return metrics
