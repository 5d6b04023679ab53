"""The Grafana dashboard (deploy/grafana/tradingd.json) against the conventions of Grafana's dashboard linter: one
datasource variable used by every panel and query, ``$__rate_interval`` in every rate/increase, a unit on every
panel, counters only inside rate/increase, no duplicate panel ids or titles; it is exactly what
deploy/grafana/build.py generates, and it queries only metrics the daemon exports."""
from __future__ import annotations

import re

import pytest

from daemon.metrics import Metrics

RANGE_FNS = ("rate", "irate", "increase")
RATE_INTERVAL = "$__rate_interval"
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _tokens(expr: str):
    """(identifier, position, innermost enclosing function or "") outside strings, label matchers and ranges."""
    stack: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "{[":  # label matchers / range: skip to the closing bracket (no nesting in PromQL)
            i = expr.index("}" if c == "{" else "]", i) + 1
            continue
        if c in "\"'":
            i = expr.index(c, i + 1) + 1
            continue
        if c == "(":
            m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", expr[:i])
            stack.append(m.group(1) if m else "")
        elif c == ")":
            stack.pop()
        else:
            m = _IDENT.match(expr, i)
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_.")):
                yield m.group(0), i, stack[-1] if stack else ""
                i = m.end()
                continue
        i += 1


def _call_args(expr: str, open_paren: int) -> str:
    depth = 0
    for j in range(open_paren, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[j], 0)
        if depth == 0:
            return expr[open_paren + 1:j]
    raise ValueError(f"unbalanced parentheses in {expr!r}")


def lint_expr(expr: str) -> list[str]:
    """The linter's PromQL rules for one query: problems found ([] when clean)."""
    problems = []
    for m in re.finditer(r"\b(" + "|".join(RANGE_FNS) + r")\s*\(", expr):
        args = _call_args(expr, m.end() - 1)
        ranges = re.findall(r"\[([^\]]*)\]", args)
        if ranges != [RATE_INTERVAL]:
            problems.append(f"{m.group(1)}() over {ranges or 'no range'}, not [{RATE_INTERVAL}]")
    for name, _, fn in _tokens(expr):
        if name.endswith(COUNTER_SUFFIXES) and fn not in RANGE_FNS:
            problems.append(f"counter {name} outside rate/increase (in {fn or 'top level'})")
    return problems


def metric_names(expr: str) -> set[str]:
    return {name for name, _, _ in _tokens(expr) if name.startswith("tradingd_") or name == "up"}


def exported_names() -> set[str]:
    """Every sample name daemon.metrics.Metrics can export."""
    out = {"up"}
    for fam in Metrics().registry.collect():
        out |= {"counter": {fam.name + "_total"},
                "histogram": {fam.name + s for s in ("_bucket", "_count", "_sum")}}.get(fam.type, {fam.name})
    return out


@pytest.mark.parametrize("expr, bad", [
    ("sum by (s) (rate(tradingd_frames_total[$__rate_interval]))", []),
    ("histogram_quantile(0.9, sum by (le) (rate(tradingd_x_seconds_bucket{a=\"b\"}[$__rate_interval])))", []),
    ("tradingd_equity / max_over_time(tradingd_equity[24h]) - 1", []),
    ("rate(tradingd_frames_total[5m])", ["rate() over ['5m']"]),
    ("increase(tradingd_frames_total)", ["increase() over no range"]),
    ("tradingd_frames_total", ["counter tradingd_frames_total outside rate/increase (in top level)"]),
    ("sum(tradingd_x_seconds_count) / 2", ["counter tradingd_x_seconds_count outside rate/increase (in sum)"]),
    ("max_over_time(tradingd_x_sum[$__rate_interval])", ["counter tradingd_x_sum outside rate/increase "
                                                          "(in max_over_time)"]),
])
def test_the_linter_rules_catch_what_they_should(expr, bad):
    problems = lint_expr(expr)
    assert len(problems) == len(bad) and all(p.startswith(b) for p, b in zip(problems, bad)), problems


def test_dashboard_is_what_build_py_generates(dashboard_build, dashboard):
    import orjson
    assert orjson.loads(dashboard_build.render()) == dashboard, \
        "deploy/grafana/tradingd.json is stale: run python deploy/grafana/build.py"


def test_one_datasource_variable_used_by_every_panel_and_query(dashboard):
    ds_vars = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds_vars) == 1 and ds_vars[0]["query"] == "prometheus"
    ref = "${" + ds_vars[0]["name"] + "}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for p in panels:
        assert p["datasource"]["uid"] == ref, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ref, (p["title"], t["refId"])


def test_every_panel_has_a_unit(dashboard):
    missing = [p["title"] for p in dashboard["panels"]
               if p["type"] != "row" and not p.get("fieldConfig", {}).get("defaults", {}).get("unit")]
    assert missing == []


def test_queries_follow_the_linter_rules(panel_queries):
    problems = {f"{p['title']} / {t['refId']}": lint_expr(t["expr"]) for p, t in panel_queries}
    assert {k: v for k, v in problems.items() if v} == {}
    # the only template variables are the datasource's and $__rate_interval
    assert {v for _, t in panel_queries for v in re.findall(r"\$\w+", t["expr"])} == {RATE_INTERVAL}


def test_no_duplicate_panel_ids_or_titles(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(titles) == len(set(titles))
    refs = [(p["id"], t["refId"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(refs) == len(set(refs))


def test_queries_use_only_metrics_the_daemon_exports(panel_queries):
    used = set().union(*(metric_names(t["expr"]) for _, t in panel_queries))
    assert used and used - exported_names() == set()
