"""No component reaches into another's private parts: outside ``self``/``cls`` (and ``super()``), no attribute
access to an ``_underscore`` name in our packages; an owner that has something to share gives it a public name."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("market", "engines", "strategies", "research", "daemon")
ALLOWED = {"os._exit"}  # the standard library's documented name for exiting without cleanup


def _reaches(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        v = node.value
        if isinstance(v, ast.Name) and v.id in ("self", "cls"):
            continue
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
            continue
        text = ast.unparse(node)
        if text not in ALLOWED:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    return out


def test_no_private_attribute_reached_across_objects():
    bad = [r for pkg in PACKAGES if (ROOT / pkg).is_dir() for f in sorted((ROOT / pkg).rglob("*.py"))
           for r in _reaches(f)]
    assert not bad, "private attributes reached from outside their object:\n" + "\n".join(bad)
