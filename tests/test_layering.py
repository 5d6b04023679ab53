"""The house's rules, executable: read every module's imports (ast, lazy ones included) and fail when a layer
imports one it must not, or when modules import each other in a cycle. The rules are the README's Layout section."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("market", "engines", "strategies", "research", "daemon")
# package -> the packages of ours it must never import
FORBIDDEN = {
    "market": {"daemon", "engines", "strategies", "research"},
    "engines": {"daemon", "strategies", "research"},
    "strategies": {"daemon", "engines", "research"},
    "research": {"daemon"},
}
# module prefix -> module prefixes it must never import (the real venue's client does not lean on the fake venue)
FORBIDDEN_MODULES = {"daemon.binance": ("daemon.venue",)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules ``path`` imports, at any depth of the file (a lazy import is still a dependency)."""
    me = _module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            while n and n not in modules:  # `from pkg import name` names a module or something in one
                n = n.rpartition(".")[0]
            if n and n != me:
                out.add(n)
    return out


def _graph() -> nx.DiGraph:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if (ROOT / pkg).is_dir()]
    modules = {_module_name(p) for p in files}
    g = nx.DiGraph()
    for p in files:
        g.add_node(_module_name(p))
        for dep in _imports(p, modules):
            g.add_edge(_module_name(p), dep)
    return g


def test_the_graph_is_read():
    g = _graph()
    assert g.number_of_nodes() > 50 and g.has_edge("daemon.pipeline", "market.events")


def test_no_layer_imports_a_layer_it_must_not():
    g = _graph()
    bad = sorted(f"{a} -> {b}" for a, b in g.edges
                 if b.split(".")[0] in FORBIDDEN.get(a.split(".")[0], set()))
    bad += sorted(f"{a} -> {b}" for a, b in g.edges for pre, nots in FORBIDDEN_MODULES.items()
                  if (a == pre or a.startswith(pre + ".")) and any(b == n or b.startswith(n + ".") for n in nots))
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_packages_are_not_tangled_in_cycles():
    """Package-level imports have no cycle other than within ``__init__`` faces (module cycles are below)."""
    g = _graph()
    pk = nx.DiGraph((a.split(".")[0], b.split(".")[0]) for a, b in g.edges if a.split(".")[0] != b.split(".")[0])
    assert not list(nx.simple_cycles(pk))


def test_no_module_cycles():
    cycles = [c for c in nx.simple_cycles(_graph()) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_no_test_module_imports_another_test_module():
    """Tests share fixtures (``conftest.py``) and harness modules (``tests/**/`` files not named ``test_*``), never
    each other: a test module imported as a library runs its module-level setup twice and couples two suites."""
    files = list((ROOT / "tests").rglob("*.py"))
    modules = {_module_name(p) for p in files}
    bad = sorted(f"{_module_name(p)} -> {dep}" for p in files for dep in _imports(p, modules)
                 if dep.rpartition(".")[2].startswith("test_") or dep.rpartition(".")[2] == "conftest")
    assert not bad, "test modules imported as libraries:\n" + "\n".join(bad)
