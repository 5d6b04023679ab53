"""One line format for recording, replay and tests: ``<recv_ns> <raw frame>\\n`` per line, gzip text.

That is exactly the format of ``../shared/data/binance-ws``. REST depth snapshots are recorded inline as bare
JSON objects with an added ``"symbol"`` key, so multi-symbol recordings are unambiguous.

Durability (why the reader tolerates broken tails): :class:`Recorder` compresses with zlib itself and hands every
compressed byte zlib emits straight to the OS (an unbuffered file), and forces the current deflate block out
(``Z_SYNC_FLUSH``) at least every ``flush_seconds``. A crash of the process therefore loses at most the frames
still inside zlib's current block: at most ``flush_seconds`` worth. The file is then a gzip stream without its
trailer; :class:`RecordingReader` reads every complete line of it, counts the truncation and goes on with the
next file. (A file corrupt in the middle, rather than cut short, may also lose the lines of the read buffer
holding the corruption; the reader still goes on with the next file.) Nothing is fsync'ed: an OS crash can lose what the page cache held (rotation/close does fsync).

Pure synchronous file I/O: the daemon calls it from a thread or batches writes off the event loop.
"""
from __future__ import annotations

import gzip
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import msgspec
import structlog

__all__ = ["Recorder", "RecordingReader", "ReaderStats", "iter_recording", "recording_files"]

log = structlog.get_logger(__name__)


# ------------------------------------------------------------------------------------------ reading
@dataclass
class ReaderStats:
    files: int = 0
    lines: int = 0  # frames yielded
    bad_lines: int = 0  # lines without "<int> <frame>" shape (skipped)
    truncated_lines: int = 0  # a last line without its newline (a file being written or cut short)
    truncated_files: int = 0  # gzip stream ended early / corrupt tail: read up to there, then next file

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def recording_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files in the given order; a directory contributes its ``*.gz`` files in name order (= time order)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.glob("*.gz") if x.is_file()))
        else:
            out.append(p)
    return out


class RecordingReader:
    """Iterate ``(recv_ns, raw_frame_bytes)`` over recording files; broken tails are counted, never raised."""

    def __init__(self, paths: str | Path | Iterable[str | Path]) -> None:
        self.paths = recording_files(paths)
        self.stats = ReaderStats()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for path in self.paths:
            self.stats.files += 1
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[tuple[int, bytes]]:
        st = self.stats
        try:
            with gzip.open(path, "rb") as f:
                for line in f:
                    if line[-1:] != b"\n":
                        st.truncated_lines += 1
                        log.warning("recording_truncated_line", path=str(path))
                        break
                    sp = line.find(b" ")
                    try:
                        ns = int(line[:sp]) if sp > 0 else -1
                    except ValueError:
                        ns = -1
                    if ns < 0:
                        st.bad_lines += 1
                        continue
                    st.lines += 1
                    yield ns, line[sp + 1:-1]
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            st.truncated_files += 1
            log.warning("recording_truncated_file", path=str(path), error=str(e))


def iter_recording(paths: str | Path | Iterable[str | Path]) -> Iterator[tuple[int, bytes]]:
    """``(recv_ns, raw)`` for every complete line (see :class:`RecordingReader` for the counted drops)."""
    return iter(RecordingReader(paths))


# ------------------------------------------------------------------------------------------ writing
class _SymbolProbe(msgspec.Struct):
    symbol: str = ""


_probe = msgspec.json.Decoder(_SymbolProbe)


def _one_line(raw: bytes | str) -> bytes:
    """JSON never needs a raw newline (inside strings it must be escaped), so they become spaces."""
    if isinstance(raw, str):
        raw = raw.encode()
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return raw


class Recorder:
    """Append frames to rotating gzip files ``<prefix>_<UTC start>.<ns>Z.gz`` in ``dir``.

    A new file starts after ``rotate_bytes`` of uncompressed lines or ``rotate_seconds`` of clock time.
    ``clock`` returns ns since the epoch (injected: tests drive rotation without sleeping)."""

    def __init__(self, dir: str | Path, *, prefix: str = "frames", rotate_bytes: int = 64 << 20,
                 rotate_seconds: float = 3600.0, flush_seconds: float = 1.0, compresslevel: int = 6,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if rotate_bytes <= 0 or rotate_seconds <= 0 or flush_seconds < 0:
            raise ValueError("rotate_bytes and rotate_seconds must be > 0, flush_seconds >= 0")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain file-name part, got {prefix!r}")
        self.dir = Path(dir)
        self.prefix = prefix
        self.rotate_bytes = rotate_bytes
        self.rotate_ns = int(rotate_seconds * 1e9)
        self.flush_ns = int(flush_seconds * 1e9)
        self.compresslevel = compresslevel
        self.clock = clock
        self.files: list[Path] = []  # every file this recorder created, in order
        self.frames = 0
        self._fd: int | None = None
        self._z: "zlib._Compress | None" = None
        self._file_start = 0
        self._file_bytes = 0
        self._last_flush = 0
        self._closed = False

    @property
    def current_path(self) -> Path | None:
        return self.files[-1] if self._fd is not None else None

    def write(self, recv_ns: int, raw: bytes | str) -> None:
        """Record one frame as received (garbage included: replay must see what the daemon saw)."""
        self._write_line(b"%d %s\n" % (recv_ns, _one_line(raw)))

    def write_snapshot(self, recv_ns: int, symbol: str, raw_snapshot: bytes | str) -> None:
        """Record a REST depth snapshot inline, with ``"symbol"`` added when the body lacks it."""
        raw = _one_line(raw_snapshot).strip()
        try:
            has_symbol = bool(_probe.decode(raw).symbol)
        except (msgspec.DecodeError, msgspec.ValidationError):
            has_symbol = True  # not a JSON object with a string symbol: record it untouched
            log.warning("recorder_snapshot_not_object", symbol=symbol)
        if not has_symbol and raw[:1] == b"{":
            rest = raw[1:].lstrip()
            sep = b"" if rest[:1] == b"}" else b","
            raw = b'{"symbol":' + msgspec.json.encode(symbol) + sep + rest
        self._write_line(b"%d %s\n" % (recv_ns, raw))

    def flush(self) -> None:
        """Force the current deflate block to the OS (readers then see every line written so far)."""
        if self._z is not None and self._fd is not None:
            self._os_write(self._z.flush(zlib.Z_SYNC_FLUSH))
            self._last_flush = self.clock()

    def close(self) -> None:
        self._close_file()
        self._closed = True

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internals
    def _write_line(self, line: bytes) -> None:
        if self._closed:
            raise ValueError("Recorder is closed")
        now = self.clock()
        if self._fd is not None and (self._file_bytes >= self.rotate_bytes
                                     or now - self._file_start >= self.rotate_ns):
            self._close_file()
        if self._fd is None:
            self._open_file(now)
        assert self._z is not None
        out = self._z.compress(line)
        if out:
            self._os_write(out)
        self._file_bytes += len(line)
        self.frames += 1
        if now - self._last_flush >= self.flush_ns:
            self._os_write(self._z.flush(zlib.Z_SYNC_FLUSH))
            self._last_flush = now

    def _os_write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _open_file(self, now: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ns = now
        while True:  # names sort in time order; never overwrite (a frozen test clock, a restart)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
            path = self.dir / f"{self.prefix}_{stamp}.{ns % 1_000_000_000:09d}Z.gz"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                ns += 1
                continue
            break
        self._fd = fd
        self._z = zlib.compressobj(self.compresslevel, zlib.DEFLATED, 31)  # wbits 31: gzip container
        self._file_start = now
        self._file_bytes = 0
        self._last_flush = now
        self.files.append(path)
        log.info("recording_file_opened", path=str(path))

    def _close_file(self) -> None:
        if self._fd is None:
            return
        try:
            if self._z is not None:
                self._os_write(self._z.flush(zlib.Z_FINISH))
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd, self._z = None, None
