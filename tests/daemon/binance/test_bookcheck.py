"""book-check: the rebuilt book agrees with all 1,072 checkable bookTicker frames of the real recording, and the
check does fail when the book or the oracle is wrong."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import cli
from daemon.binance.codec import decode_frame
from daemon.binance.bookcheck import BookChecker
from market.events import BookTicker, DepthSnapshot, DepthUpdate
from daemon.recording import Recorder, iter_recording

ROOT = Path(__file__).resolve().parents[3]
EXPECTED = {"applied": 6493, "checked": 1072, "matched": 1072, "mismatched": 0, "gaps": 0}


@pytest.fixture(scope="module")
def lines(binance_recording):
    return list(iter_recording(binance_recording))


def _write(path: Path, lines) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as f:
        for ns, raw in lines:
            f.write(b"%d %s\n" % (ns, raw))
    return path


def _run(capsys, *argv):
    capsys.readouterr()  # drop what earlier code in the test logged
    rc = cli.main(["book-check", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_real_recording_matches_every_checkable_ticker(binance_recording, capsys):
    rc, out, err = _run(capsys, *binance_recording)
    assert rc == 0, err
    assert out.count("\n") == 1 and json.loads(out) == EXPECTED


def test_directory_argument_reads_files_in_name_order(binance_recording, capsys):
    rc, out, _ = _run(capsys, binance_recording[0].parent)
    assert rc == 0 and json.loads(out) == EXPECTED


def test_console_script_subprocess(binance_recording):
    exe = ROOT / ".venv" / "bin" / "tradingd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "daemon.cli"]
    p = subprocess.run([*cmd, "book-check", *map(str, binance_recording)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == EXPECTED


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    rc, out, err = _run(capsys, tmp_path / "nope.gz")
    assert rc == 2 and out == "" and "recording not found" in err and "nope.gz" in err


def test_a_wrong_ticker_is_a_mismatch_and_exit_1(lines, tmp_path, capsys):
    checker = BookChecker()
    target = None
    for ns, raw in lines:  # find the first ticker that gets checked
        before = checker.checked
        ev = decode_frame(raw, ns)
        checker.on_event(ev)
        if checker.checked > before:
            break
    # the checked ticker may have been pending: find the latest ticker line with the book's id
    uid = next(iter(checker.books.values())).last_update_id
    target = next(i for i, (ns, raw) in enumerate(lines)
                  if b"bookTicker" in raw and json.loads(raw)["data"]["u"] == uid)
    ns, raw = lines[target]
    obj = json.loads(raw)
    obj["data"]["B"] = "123.45600000"
    bad = lines[:target] + [(ns, json.dumps(obj).encode())] + lines[target + 1:]
    rc, out, err = _run(capsys, _write(tmp_path / "bad.gz", bad))
    assert rc == 1 and "disagree" in err
    assert json.loads(out) == {**EXPECTED, "matched": 1071, "mismatched": 1}


def test_a_lost_diff_is_a_gap_and_nothing_after_it_is_checked(lines, tmp_path, capsys):
    depth_idx = [i for i, (_, raw) in enumerate(lines) if b"depthUpdate" in raw]
    drop = depth_idx[len(depth_idx) // 2]
    rc, out, _ = _run(capsys, _write(tmp_path / "gap.gz", lines[:drop] + lines[drop + 1:]))
    s = json.loads(out)
    assert rc == 0 and s["gaps"] == 1 and s["mismatched"] == 0
    assert 0 < s["checked"] == s["matched"] < 1072 and s["applied"] < 6493


def test_a_corrupted_diff_breaks_the_book_and_is_caught(lines, tmp_path, capsys):
    """Slip a phantom bid (half a tick above the best bid, so no real diff ever removes it) into one diff:
    the oracle must notice, i.e. the check can fail."""
    checker = BookChecker()
    victim = best = None
    for i, (ns, raw) in enumerate(lines):
        ev = decode_frame(raw, ns)
        checker.on_event(ev)
        if i > 1000 and isinstance(ev, DepthUpdate) and checker.books["BTCUSDT"].is_tradeable:
            victim, best = i, checker.books["BTCUSDT"].best_bid()
            break
    assert victim is not None
    obj = json.loads(lines[victim][1])
    obj["data"]["b"].append(["%.8f" % (best[0] + 0.005), "1.00000000"])
    bad = lines[:victim] + [(lines[victim][0], json.dumps(obj).encode())] + lines[victim + 1:]
    rc, out, _ = _run(capsys, _write(tmp_path / "corrupt.gz", bad))
    assert rc == 1 and json.loads(out)["mismatched"] >= 1


def test_two_symbols_one_book_each(lines, tmp_path, capsys):
    """Interleave the real stream with a renamed copy; snapshots carry the recorder's "symbol" key."""
    rec = Recorder(tmp_path / "rec", prefix="multi", clock=lambda: 1_723_161_253_000_000_000)
    for ns, raw in lines:
        for sym, low in (("BTCUSDT", b"btcusdt"), ("ETHUSDT", b"ethusdt")):
            if raw.startswith(b'{"lastUpdateId"'):
                rec.write_snapshot(ns, sym, raw)
            else:
                rec.write(ns, raw.replace(b"BTCUSDT", sym.encode()).replace(b"btcusdt", low))
    rec.close()
    rc, out, _ = _run(capsys, tmp_path / "rec")
    assert rc == 0
    assert json.loads(out) == {"applied": 2 * 6493, "checked": 2 * 1072, "matched": 2 * 1072, "mismatched": 0,
                               "gaps": 0}


def test_nothing_checked_exits_3(lines, tmp_path, capsys):
    no_tickers = [(ns, raw) for ns, raw in lines[:5000] if b"bookTicker" not in raw]
    rc, out, err = _run(capsys, _write(tmp_path / "nt.gz", no_tickers))
    assert rc == 3 and json.loads(out)["checked"] == 0 and "nothing was verified" in err


def test_futures_pu_chain_and_pending_tickers():
    """USD-M futures: pu chaining; a ticker that arrives before its diff is checked once the diff lands."""
    sym = "BTCUSDT"
    c = BookChecker()
    c.on_event(DepthUpdate(sym, 95, 100, 94, [(99.0, 2.0)], [], 0, 0))  # futures (pu present), buffered
    c.on_event(DepthSnapshot("", 100, [(99.0, 1.0)], [(101.0, 1.0)], 0))  # symbol-less: the only book
    assert c.books[sym].futures and c.books[sym].is_tradeable
    c.on_event(BookTicker(sym, 100, 99.0, 2.0, 101.0, 1.0, 0))  # == last applied: checked now
    c.on_event(BookTicker(sym, 107, 99.5, 1.0, 101.0, 1.0, 0))  # ahead of the book: waits
    c.on_event(BookTicker(sym, 104, 99.0, 2.0, 100.5, 3.0, 0))  # skipped over by the diff below: never checked
    c.on_event(DepthUpdate(sym, 103, 107, 100, [(99.5, 1.0)], [], 0, 0))  # U jumps, pu chains
    assert c.summary() == {"applied": 2, "checked": 2, "matched": 2, "mismatched": 0, "gaps": 0}
    c.on_event(BookTicker(sym, 110, 99.5, 1.0, 101.0, 9.0, 0))
    c.on_event(DepthUpdate(sym, 108, 110, 107, [], [(101.0, 8.0)], 0, 0))  # ticker says 9.0: mismatch
    c.on_event(DepthUpdate(sym, 112, 115, 111, [], [], 0, 0))  # pu 111 != 110: gap
    assert c.summary() == {"applied": 3, "checked": 3, "matched": 2, "mismatched": 1, "gaps": 1}
    assert c.mismatches[0]["update_id"] == 110


def test_checker_ignores_ambiguous_symbolless_snapshot():
    c = BookChecker()
    c.on_event(DepthUpdate("A", 1, 2, -1, [], [], 0, 0))
    c.on_event(DepthUpdate("B", 1, 2, -1, [], [], 0, 0))
    c.on_event(DepthSnapshot("", 1, [], [], 0))
    assert c.ignored["ambiguous_snapshot"] == 1 and not any(b.is_tradeable for b in c.books.values())
