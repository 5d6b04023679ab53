#!/usr/bin/env python3
"""Write config.toml from the typed config tree, so every option is present and documented in one place.

Run after adding or changing an option:  .venv/bin/python scripts/gen_config.py
tests/daemon/test_config.py fails when config.toml is out of date.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import Config  # noqa: E402

HEADER = """\
# tradingd configuration. Generated from the typed config tree by scripts/gen_config.py: every option is here
# with its default and meaning. Unknown keys, wrong types and out-of-range values are refused at start-up with
# an error naming the key. Secrets are never read from this file: name the environment variable instead.
"""


def fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    raise TypeError(type(v))


def render() -> str:
    out = [HEADER]
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        out.append(f"\n[{section.name}]")
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out.append("# " + " ".join(cls.__doc__.split()))
        for f in dataclasses.fields(cls):
            meta = f.metadata
            rng = []
            for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if meta.get(k) is not None:
                    rng.append(f"{sym} {meta[k]}")
            if meta.get("choices"):
                rng.append("one of " + ", ".join(map(str, meta["choices"])))
            doc = meta.get("doc", "")
            out.append(f"# {doc}" + (f" ({'; '.join(rng)})" if rng else ""))
            out.append(f"{f.name} = {fmt(f.default)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "config.toml"
    target.write_text(render())
    print(f"wrote {target}")
