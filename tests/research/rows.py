"""Rows of the real universe files, read and written back (slices for the research tests)."""
from __future__ import annotations

import gzip
from pathlib import Path

SYMS5 = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "LINKUSDT")


def read_rows(path: Path) -> tuple[str, list[str]]:
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    return lines[0], lines[1:]


def write_rows(path: Path, header: str, rows: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("\n".join([header, *rows]) + "\n")
    return path
