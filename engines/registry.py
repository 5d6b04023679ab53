"""Model registry on disk: versioned, checksummed, atomically published model directories.

Layout (one directory per model kind and timeframe, because XGBoost and LSTM are retrained and hot-swapped
independently)::

    <root>/<timeframe>/<kind>/<version>/manifest.json     + the model's own files (xgb_model.ubj, lstm.onnx, ...)
    <root>/<timeframe>/<kind>/current                     text file: the current version's name

* ``publish`` fills ``<kind>/.tmp-<version>-<pid>-<rand>/`` (model files, then ``manifest.json`` with every
  file's sha256 and size), fsyncs every file and the directory, renames it to ``<version>`` and fsyncs the
  parent: a reader sees a complete version or none.
* ``current`` pointers are swapped by writing a temp file, fsync, ``os.replace``, fsync of the directory.
* ``verify``/``load`` refuse with :class:`ModelLoadError` (the daemon keeps its old model): missing or corrupt
  manifest, unknown manifest format version, kind/timeframe not matching the location, feature-schema hash
  different from the running feature set, a file missing, truncated, resized or with a different sha256.

Pure file I/O: no xgboost/torch imports (library versions are read from package metadata, not imports).
Version names sort by creation time: ``YYYYmmddTHHMMSSfffZ-<content hash 8>``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import structlog

from engines.metrics_common import sha256_file  # noqa: F401 - one definition, re-exported
from engines.base import ModelLoadError

__all__ = ["ModelRegistry", "VersionRef", "MANIFEST", "POINTER", "FORMAT_VERSION", "read_manifest",
           "verify_version_dir", "sha256_file", "default_library_versions"]

log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"
POINTER = "current"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LIBS = ("xgboost", "xgboost-cpu", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")


@dataclass(frozen=True)
class VersionRef:
    """A published, verified version: where it lives and what its manifest says."""

    timeframe: str
    kind: str
    version: str
    path: Path
    manifest: Mapping[str, Any]




def default_library_versions(names: Iterable[str] = _LIBS) -> dict[str, str]:
    """Installed versions of the model libraries, from package metadata (nothing is imported)."""
    from importlib import metadata
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    import platform
    out["python"] = platform.python_version()
    return out


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: letters, digits, '_', '-', '.' only")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json`` (format version, required keys); ModelLoadError otherwise."""
    path = Path(version_dir) / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model manifest missing: {path} (incomplete or foreign directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"model manifest unreadable or corrupt: {path}: {e}") from None
    if not isinstance(m, dict):
        raise ModelLoadError(f"model manifest {path} is not a JSON object")
    fmt = m.get("format")
    if fmt != FORMAT_VERSION:
        raise ModelLoadError(f"model manifest {path} has unknown format version {fmt!r} "
                             f"(this build reads format {FORMAT_VERSION})")
    for key in ("kind", "timeframe", "version", "feature_schema", "files"):
        if key not in m:
            raise ModelLoadError(f"model manifest {path} lacks key {key!r}")
    if not isinstance(m["files"], dict) or not m["files"]:
        raise ModelLoadError(f"model manifest {path} lists no files")
    return m


def verify_version_dir(version_dir: Path, *, schema_hash: str | None = None, kind: str | None = None,
                       timeframe: str | None = None) -> dict[str, Any]:
    """Check a version directory against its manifest (and the running feature schema); return the manifest."""
    d = Path(version_dir)
    m = read_manifest(d)
    if kind is not None and m["kind"] != kind:
        raise ModelLoadError(f"{d}: manifest says kind {m['kind']!r}, expected {kind!r}")
    if timeframe is not None and m["timeframe"] != timeframe:
        raise ModelLoadError(f"{d}: manifest says timeframe {m['timeframe']!r}, expected {timeframe!r}")
    got_schema = (m.get("feature_schema") or {}).get("hash")
    if schema_hash is not None and got_schema != schema_hash:
        raise ModelLoadError(f"{d}: model was trained on feature schema {got_schema!r} but the running feature "
                             f"set is {schema_hash!r}; refusing it (retrain on the current features)")
    for name, info in m["files"].items():
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ModelLoadError(f"{d}: manifest lists an invalid file name {name!r}")
        try:
            _verify_file(d, name, info)
        except ModelLoadError as e:
            if not info.get("optional"):
                raise
            # an opt-in backend's file (the LSTM's INT8 graph): the backend that reads it checks it again
            # against the model's own checksummed metadata and refuses it, and the daemon falls back (counted)
            log.warning("optional_model_file_bad", version_dir=str(d), file=name, error=str(e))
    return m


def _verify_file(d: Path, name: str, info: Mapping[str, Any]) -> None:
    """One manifest entry: present, the recorded size and sha256 (else ModelLoadError naming it)."""
    p = d / name
    if not p.is_file():
        raise ModelLoadError(f"{d}: model file {name} listed in the manifest is missing")
    size = p.stat().st_size
    want = int(info.get("size", -1))
    if size != want:
        what = "truncated" if size < want else "larger than recorded"
        raise ModelLoadError(f"{d}: model file {name} is {what} ({size} bytes, manifest says {want})")
    digest = sha256_file(p)
    if digest != info.get("sha256"):
        raise ModelLoadError(f"{d}: model file {name} checksum mismatch (sha256 {digest[:12]}…, manifest "
                             f"says {str(info.get('sha256'))[:12]}…): corrupt or altered")


class ModelRegistry:
    """Versioned model store under ``root`` (see module doc). ``clock_ns`` is injected for tests."""

    def __init__(self, root: Path | str, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.root = Path(root)
        self._clock_ns = clock_ns

    # ------------------------------------------------------------------------------------------- paths
    def kind_dir(self, timeframe: str, kind: str) -> Path:
        return self.root / _check_name("timeframe", timeframe) / _check_name("kind", kind)

    def version_dir(self, timeframe: str, kind: str, version: str) -> Path:
        return self.kind_dir(timeframe, kind) / _check_name("version", version)

    # ------------------------------------------------------------------------------------------- publish
    def publish(self, kind: str, timeframe: str, source: Path | str | Callable[[Path], None], *,
                feature_names: list[str], schema_hash: str, data_window: Mapping[str, Any] | None = None,
                metrics: Mapping[str, Any] | None = None, library_versions: Mapping[str, str] | None = None,
                extra: Mapping[str, Any] | None = None, make_current: bool = False,
                version: str | None = None, optional: Iterable[str] = ()) -> VersionRef:
        """Publish a new version atomically from a directory of model files or a writer ``source(tmp_dir)``.

        Returns the verified VersionRef; with ``make_current`` the timeframe's pointer is swapped to it.
        ``optional``: files (when present) that only an opt-in backend reads (the LSTM's INT8 graph), marked in the
        manifest so that damage to one of them does not refuse the whole version (see verify_version_dir)."""
        optional = frozenset(optional)
        kdir = self.kind_dir(timeframe, kind)
        kdir.mkdir(parents=True, exist_ok=True)
        created_ns = int(self._clock_ns())
        tmp = kdir / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            if callable(source):
                source(tmp)
            else:
                src = Path(source)
                if not src.is_dir():
                    raise ValueError(f"publish source {src} is not a directory")
                for p in sorted(src.iterdir()):
                    if p.is_file() and p.name != MANIFEST:
                        shutil.copy2(p, tmp / p.name)
            files: dict[str, dict[str, Any]] = {}
            content = hashlib.sha256()
            for p in sorted(tmp.iterdir()):
                if p.name == MANIFEST:
                    raise ValueError("model files must not include their own manifest.json")
                if not p.is_file():
                    raise ValueError(f"publish supports flat directories only; {p.name} is not a file")
                _fsync_file(p)
                digest = sha256_file(p)
                files[p.name] = {"sha256": digest, "size": p.stat().st_size}
                if p.name in optional:
                    files[p.name]["optional"] = True
                content.update(f"{p.name}\0{digest}\0".encode())
            if not files:
                raise ValueError("nothing to publish: no model files")
            stamp = datetime.fromtimestamp(created_ns / 1e9, tz=timezone.utc)
            version = _check_name("version", version or
                                  f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z-{content.hexdigest()[:8]}")
            manifest = {
                "format": FORMAT_VERSION,
                "version": version,
                "kind": kind,
                "timeframe": timeframe,
                "feature_schema": {"hash": schema_hash, "names": list(feature_names)},
                "data_window": dict(data_window or {}),
                "metrics": dict(metrics or {}),
                "files": files,
                "library_versions": dict(library_versions if library_versions is not None
                                         else default_library_versions()),
                "created_ns": created_ns,
                "created": stamp.isoformat(),
                "extra": dict(extra or {}),
            }
            mpath = tmp / MANIFEST
            with open(mpath, "w") as f:
                f.write(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            final = kdir / version
            if final.exists():
                raise FileExistsError(f"version {version} already exists in {kdir}")
            os.rename(tmp, final)
            _fsync_dir(kdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("model_published", kind=kind, timeframe=timeframe, version=version, files=len(files))
        ref = VersionRef(timeframe, kind, version, final, manifest)
        if make_current:
            self.set_current(timeframe, kind, version)
        return ref

    # ------------------------------------------------------------------------------------------- queries
    def list_versions(self, timeframe: str, kind: str) -> list[str]:
        """Published version names, oldest first (temp dirs of in-flight or crashed publishes excluded)."""
        kdir = self.kind_dir(timeframe, kind)
        if not kdir.is_dir():
            return []
        return sorted(p.name for p in kdir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())

    def current_version(self, timeframe: str, kind: str) -> str | None:
        """The name in the ``current`` pointer file, or None when there is none. A pointer that does not name a
        version directory inside this kind's directory (``../../etc``, an absolute path, a missing or temp dir)
        is refused with :class:`ModelLoadError` naming the pointer file: it is never followed."""
        kdir = self.kind_dir(timeframe, kind)
        p = kdir / POINTER
        try:
            name = p.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{p}: unreadable model pointer: {e}") from None
        if not name:
            return None
        if not _NAME_RE.match(name) or name in (".", "..") or name.startswith(".") or \
                not (kdir / name).is_dir() or (kdir / name).resolve().parent != kdir.resolve():
            raise ModelLoadError(f"{p}: pointer {name[:200]!r} does not name a version directory in {kdir} "
                                 f"(published versions: {', '.join(self.list_versions(timeframe, kind)) or 'none'}); "
                                 f"fix or delete the file")
        return name

    def current(self, timeframe: str, kind: str) -> Path | None:
        """Directory of the current version (not verified; use :meth:`load`), or None when none is set."""
        v = self.current_version(timeframe, kind)
        return None if v is None else self.version_dir(timeframe, kind, v)

    def set_current(self, timeframe: str, kind: str, version: str) -> None:
        """Point the timeframe's ``current`` at ``version`` (verified first) with an atomic replace."""
        d = self.version_dir(timeframe, kind, version)
        verify_version_dir(d, kind=kind, timeframe=timeframe)
        kdir = d.parent
        tmp = kdir / f".{POINTER}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        with open(tmp, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, kdir / POINTER)
        _fsync_dir(kdir)
        log.info("model_current_set", kind=kind, timeframe=timeframe, version=version)

    def verify(self, timeframe: str, kind: str, version: str, *, schema_hash: str | None = None) -> VersionRef:
        d = self.version_dir(timeframe, kind, version)
        if not d.is_dir():
            raise ModelLoadError(f"model version {version} not found in {d.parent}")
        m = verify_version_dir(d, schema_hash=schema_hash, kind=kind, timeframe=timeframe)
        if m["version"] != version:
            raise ModelLoadError(f"{d}: manifest names version {m['version']!r}, directory is {version!r}")
        return VersionRef(timeframe, kind, version, d, m)

    def load(self, timeframe: str, kind: str, *, schema_hash: str | None) -> VersionRef:
        """The current version, verified against its manifest and the running feature schema hash."""
        v = self.current_version(timeframe, kind)
        if v is None:
            raise ModelLoadError(f"no current {kind} model for timeframe {timeframe} in {self.root}")
        return self.verify(timeframe, kind, v, schema_hash=schema_hash)

    def remove_stale_temp(self) -> int:
        """Delete temp dirs/files left by crashed publishes (call at start-up, before any publisher runs)."""
        n = 0
        if not self.root.is_dir():
            return 0
        for p in self.root.glob("*/*/.*tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
        return n
