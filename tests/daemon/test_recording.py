"""Recording format: read the real files, write/rotate/read back, survive truncated tails of crashed writers."""
from __future__ import annotations

import gzip
import shutil
import zlib

import pytest

from daemon.binance.codec import decode_frame
from market.events import DepthSnapshot
from daemon.recording import Recorder, RecordingReader, iter_recording, recording_files


class FakeClock:
    def __init__(self, t: int = 1_723_161_253_000_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_reads_the_real_recording(binance_recording):
    reader = RecordingReader(binance_recording)
    frames = list(reader)
    assert len(frames) == 6495 + 19904 + 73174 + 1
    assert frames[0][0] == 1723161253937085768 and frames[0][1].startswith(b'{"stream":"btcusdt@depth@100ms"')
    assert all(isinstance(ns, int) and raw[:1] == b"{" and not raw.endswith(b"\n") for ns, raw in frames[:1000])
    assert reader.stats.as_dict() == {"files": 2, "lines": 99574, "bad_lines": 0, "truncated_lines": 0,
                                      "truncated_files": 0}
    assert list(iter_recording(binance_recording[0].parent)) == frames  # directory: *.gz in name order


def test_round_trip_and_one_line_per_frame(tmp_path):
    clock = FakeClock()
    frames = [(1, b'{"a":1}'), (2, '{"b":"text frame"}'), (3, b'{\n  "pretty": [1,\n 2]\r\n}'), (4, b"garbage")]
    with Recorder(tmp_path, prefix="t", clock=clock) as rec:
        for ns, raw in frames:
            rec.write(ns, raw)
    assert len(rec.files) == 1 and rec.files[0].name == "t_20240808T235413.000000000Z.gz"
    got = list(iter_recording(tmp_path))
    assert got == [(1, b'{"a":1}'), (2, b'{"b":"text frame"}'), (3, b'{   "pretty": [1,  2]  }'), (4, b"garbage")]
    assert decode_frame(got[2][1], 0) is None  # still the same JSON value
    with gzip.open(rec.files[0], "rb") as f:  # a plain gzip file, readable by any tool
        assert f.read().count(b"\n") == 4
    with pytest.raises(ValueError):
        rec.write(5, b"{}")


def test_snapshot_gets_a_symbol_key(tmp_path, binance_recording):
    snap_raw = next(raw for _, raw in iter_recording(binance_recording) if raw.startswith(b'{"lastUpdateId"'))
    with Recorder(tmp_path, clock=FakeClock()) as rec:
        rec.write_snapshot(10, "BTCUSDT", snap_raw)
        rec.write_snapshot(11, "ETHUSDT", b'{"symbol":"ETHUSDT","lastUpdateId":5,"bids":[],"asks":[]}')
        rec.write_snapshot(12, "XRPUSDT", b' {}')
    (ns, raw), (_, raw2), (_, raw3) = list(iter_recording(tmp_path))
    ev = decode_frame(raw, ns)
    assert isinstance(ev, DepthSnapshot) and ev.symbol == "BTCUSDT" and ev.last_update_id == 50093239218
    assert ev.bids == decode_frame(snap_raw, 0).bids
    assert raw2.count(b'"symbol"') == 1  # already there: untouched
    assert raw3 == b'{"symbol":"XRPUSDT"}'


def test_rotation_by_bytes_and_by_time(tmp_path):
    clock = FakeClock()
    rec = Recorder(tmp_path, prefix="r", rotate_bytes=100, rotate_seconds=60, clock=clock)
    sent = []
    for i in range(30):
        raw = b'{"i":%d,"pad":"%s"}' % (i, b"x" * 20)
        rec.write(i, raw)
        sent.append((i, raw))
        clock.t += 1_000_000  # 1 ms: only the byte limit rotates
    n_bytes_files = len(rec.files)
    assert n_bytes_files == 10  # 3 lines of 35 bytes pass 100 bytes
    clock.t += 61 * 10**9  # a minute later: time rotation
    rec.write(99, b"{}")
    sent.append((99, b"{}"))
    rec.close()
    assert len(rec.files) == n_bytes_files + 1
    assert [p.name for p in recording_files(tmp_path)] == [p.name for p in rec.files]  # name order == time order
    assert list(iter_recording(tmp_path)) == sent


def test_same_clock_reading_never_overwrites(tmp_path):
    clock = FakeClock()
    for i in range(3):  # three restarts at the same instant
        with Recorder(tmp_path, prefix="p", clock=clock) as rec:
            rec.write(i, b"{}")
    assert [ns for ns, _ in iter_recording(tmp_path)] == [0, 1, 2]


def test_crashed_writer_loses_at_most_the_unflushed_block(tmp_path):
    clock = FakeClock()
    rec = Recorder(tmp_path / "live", clock=clock, flush_seconds=1.0)
    for i in range(200):
        rec.write(i, b'{"frame":%d}' % i)
        clock.t += 10_000_000  # 10 ms per frame: a sync flush every ~100 frames
    # simulate a crash: copy the file as the OS has it, without close()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(rec.files[0], crashed / "a.gz")
    reader = RecordingReader(crashed)
    got = list(reader)
    assert 100 <= len(got) <= 200 and got == [(i, b'{"frame":%d}' % i) for i in range(len(got))]
    assert reader.stats.truncated_files == 1
    rec.flush()  # an explicit flush makes everything readable, even while the file stays open
    shutil.copy(rec.files[0], crashed / "a.gz")
    assert len(list(iter_recording(crashed))) == 200
    rec.close()
    reader = RecordingReader(tmp_path / "live")
    assert len(list(reader)) == 200 and reader.stats.truncated_files == 0


def test_any_truncation_point_reads_a_clean_prefix(tmp_path):
    path = tmp_path / "full.gz"
    lines = [(i, b'{"stream":"x@trade","data":{"i":%d}}' % i) for i in range(300)]
    with gzip.open(path, "wb") as f:
        for ns, raw in lines:
            f.write(b"%d %s\n" % (ns, raw))
    data = path.read_bytes()
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    prev = -1
    for cut in list(range(0, len(data), max(1, len(data) // 60))) + [len(data) - 8, len(data) - 1]:
        (cut_dir / "c.gz").write_bytes(data[:cut])
        reader = RecordingReader(cut_dir / "c.gz")
        got = list(reader)  # never raises
        assert got == lines[:len(got)]
        if 0 < cut < len(data) - 8:  # (an empty file is just a file nothing was flushed to yet)
            assert reader.stats.truncated_files + reader.stats.truncated_lines >= 1
        assert len(got) >= prev or cut >= len(data) - 8
        prev = len(got)


def test_truncated_last_line_and_bad_lines_are_counted(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'1 {"a":1}\nnot-a-number {"b":2}\n\n-5 {}\n2 {"c":3}\n3 {"d":')
    reader = RecordingReader([path, path])  # a truncated file does not stop the next one
    assert list(reader) == [(1, b'{"a":1}'), (2, b'{"c":3}')] * 2
    assert (reader.stats.bad_lines, reader.stats.truncated_lines, reader.stats.files) == (6, 2, 2)


def test_corrupt_file_is_counted_and_the_next_file_still_read(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"this is not gzip at all")
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(b"7 {}\n")
    c = zlib.compressobj(6, zlib.DEFLATED, 31)  # corrupt (not merely truncated) data after a flushed block
    (tmp_path / "c.gz").write_bytes(c.compress(b"8 {}\n") + c.flush(zlib.Z_SYNC_FLUSH) + b"\x00garbage")
    with gzip.open(tmp_path / "d.gz", "wb") as f:
        f.write(b"9 {}\n")
    reader = RecordingReader(tmp_path)
    got = list(reader)
    # a corrupt middle may cost the lines of the read buffer it sits in (here line 8); never the other files
    assert got in ([(7, b"{}"), (9, b"{}")], [(7, b"{}"), (8, b"{}"), (9, b"{}")])
    assert reader.stats.truncated_files == 2 and reader.stats.files == 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        Recorder("/tmp/x", rotate_bytes=0)
    with pytest.raises(ValueError):
        Recorder("/tmp/x", prefix="a/b")
