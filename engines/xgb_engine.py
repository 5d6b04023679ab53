"""XGBoost inference backends behind the InferenceEngine protocol.

* ``compiled-cpu`` — default on CPU. The booster's trees are flattened into one array of 16-byte nodes
  (left, right, feature | default-left bit, threshold-or-leaf) and walked by a small C function compiled with
  the system compiler at first use and called through ctypes. The C source is model-independent (the model is
  data), so one shared object serves every model: it is cached under ``cache_dir`` keyed by the sha256 of the
  source + compiler version + flags, and a hot swap never recompiles. Float32 compares (``x < threshold``,
  NaN takes the default branch) and float32 accumulation starting from the base margin reproduce XGBoost's own
  CPU predictor; at load the walker is checked against the booster on probe rows (NaN rows included) and the
  model is refused if they differ by more than 1e-6. Without a compiler it falls back to a numpy walker
  (vectorised over rows × trees) and reports ``backend = "numpy-cpu"``.
* ``native-cpu`` / ``native-cuda`` — the booster itself via ``inplace_predict`` (margin → sigmoid).
  ``native-cuda`` needs a CUDA build of xgboost and a GPU (else BackendUnavailable).

``auto`` = ``native-cuda`` on a CUDA build with a GPU, else ``compiled-cpu``. All backends return
``sigmoid(raw margin)``, so models trained with the custom dollar-profit objective work everywhere.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engines.base import BackendUnavailable, ModelLoadError, VersionedEngine, latency_p50_us
from engines.xgb_model import XGBoostModel, read_meta, select_device

log = structlog.get_logger(__name__)

__all__ = [
    "XGBEngine", "NativeCPUEngine", "NativeCUDAEngine", "CompiledCPUEngine", "XGB_ENGINES", "make_xgb_engine",
    "backend_available", "FlatForest", "flatten_booster", "compile_walker", "numpy_margin", "MATCH_TOL",
]

MATCH_TOL = 1e-6          # compiled walker vs booster, probability units


# ------------------------------------------------------------------------------------------ shared base
class XGBEngine(VersionedEngine):
    """XGBoost load/validate/warm-up; subclasses implement ``_open`` and ``_run`` (float32 rows in, P(up) out)."""

    kind = "xgboost"

    def load(self, version_dir: Path) -> None:
        """Read + verify the version dir (checksums, schema); any failure is ModelLoadError, never ready."""
        self._ready = self._loaded = False
        d = Path(version_dir)
        meta = read_meta(d)
        schema = self._check_schema(d, meta)
        self._guarded(d, "XGBoost model", lambda: self._open(XGBoostModel.load(d, device=self.device), meta))
        self._set_loaded(d, meta, schema)

    def representative_rows(self, n: int, seed: int = 0) -> np.ndarray:
        """Rows drawn from the training feature stats (mean/std/NaN fraction), at least one NaN per column."""
        rng = np.random.default_rng(seed)
        st = self.meta.get("feature_stats") or {}
        f = self.n_features
        mean = np.asarray(st.get("mean", [0.0] * f), np.float64)
        std = np.asarray(st.get("std", [1.0] * f), np.float64)
        nan_frac = np.asarray(st.get("nan_frac", [0.0] * f), np.float64)
        x = mean + std * rng.standard_normal((n, f))
        x[rng.random((n, f)) < np.maximum(nan_frac, 0.05)] = np.nan
        return x.astype(np.float32)

    def warmup(self, n: int) -> None:
        """Run n single-row predictions and one batch of 64 on representative rows, then go ready."""
        self._require_loaded("warmup")
        x = self.representative_rows(64)
        times = []
        for i in range(max(1, int(n))):
            t0 = time.perf_counter_ns()
            self.predict(x[i % 64: i % 64 + 1])
            times.append(time.perf_counter_ns() - t0)
        p = self.predict(x)
        if p.shape != (64,) or not np.all((p >= 0) & (p <= 1)):
            raise ModelLoadError(f"{self.backend}: warm-up produced invalid probabilities")
        self._warm_ns = times
        self._ready = True
        log.info("engine_warm", kind=self.kind, backend=self.backend, version=self.version,
                 p50_us=latency_p50_us(times))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """P(up) per row for (n, n_features) input; NaN = missing (takes the trees' default branch)."""
        self._require_loaded("predict")
        x = batch if isinstance(batch, np.ndarray) else np.asarray(batch)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"XGBoost input must be (n, {self.n_features}), got {x.shape}")
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 0:
            return np.empty(0, np.float64)
        self._check_inf(x)
        return self._run(x)

    # -- backend hooks
    def _check_inf(self, x: np.ndarray) -> None:
        if np.isinf(x).any():
            raise ValueError("XGBoost input contains inf (NaN is the only accepted missing value)")

    def _open(self, model: XGBoostModel, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ native booster
class NativeCPUEngine(XGBEngine):
    """The booster's own predictor (``inplace_predict``, margin → sigmoid). ``nthread`` option (default 1:
    a single row is latency-bound and thread hand-offs cost more than they save)."""

    backend = "native-cpu"
    device = "cpu"

    def _open(self, model: XGBoostModel, meta: dict[str, Any]) -> None:
        self._booster = model.booster
        self._booster.set_param({"nthread": int(self.options.get("nthread", 1)), "device": self.device})

    def _run(self, x: np.ndarray) -> np.ndarray:
        m = self._booster.inplace_predict(x, predict_type="margin", missing=np.nan)
        return 1.0 / (1.0 + np.exp(-np.asarray(m, dtype=np.float64)))

    def _extra_info(self) -> dict[str, Any]:
        return {"nthread": int(self.options.get("nthread", 1))}


class NativeCUDAEngine(NativeCPUEngine):
    """Booster on the GPU; input is moved with cupy when installed (else XGBoost copies it itself)."""

    backend = "native-cuda"
    device = "cuda"

    def _open(self, model: XGBoostModel, meta: dict[str, Any]) -> None:
        if select_device() != "cuda":
            raise BackendUnavailable("native-cuda needs a CUDA build of xgboost and a GPU")
        super()._open(model, meta)
        try:
            import cupy  # type: ignore
            self._cp = cupy
        except ImportError:
            self._cp = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._cp is not None:
            m = self._booster.inplace_predict(self._cp.asarray(x), predict_type="margin", missing=np.nan)
            m = self._cp.asnumpy(m)
        else:
            m = self._booster.inplace_predict(x, predict_type="margin", missing=np.nan)
        return 1.0 / (1.0 + np.exp(-np.asarray(m, dtype=np.float64)))


# ------------------------------------------------------------------------------------------ flat forest
NODE_DTYPE = np.dtype([("left", "<i4"), ("right", "<i4"), ("feat", "<u4"), ("val", "<f4")])
DEFAULT_LEFT_BIT = np.uint32(1 << 31)
LEAF_BIT = np.uint32(1 << 30)
FEAT_MASK = np.uint32((1 << 30) - 1)
LOCKSTEP_MAX_DEPTH = 16     # deeper forests are walked tree by tree (lock-step would waste steps)


class FlatForest:
    """All trees of a binary booster as one node array plus each tree's root.

    Split node: ``left``/``right`` absolute child indices, ``feat`` = feature | default-left bit, ``val`` =
    threshold. Leaf: ``left = right = own index`` (so a fixed number of steps can walk every tree in lock-step),
    ``feat`` has the leaf bit, ``val`` = leaf value."""

    def __init__(self, nodes: np.ndarray, roots: np.ndarray, base_margin: float, n_features: int,
                 max_depth: int) -> None:
        self.nodes = np.ascontiguousarray(nodes, dtype=NODE_DTYPE)
        self.roots = np.ascontiguousarray(roots, dtype=np.int32)
        self.base_margin = float(np.float32(base_margin))
        self.n_features = int(n_features)
        self.max_depth = int(max_depth)
        n = self.nodes.size
        ok = ((self.nodes["left"] >= 0) & (self.nodes["left"] < n) & (self.nodes["right"] >= 0)
              & (self.nodes["right"] < n) & ((self.nodes["feat"] & FEAT_MASK) < max(self.n_features, 1)))
        if not ok.all() or ((self.roots < 0) | (self.roots >= max(n, 1))).any():
            raise ModelLoadError("flattened forest has out-of-range child, root or feature indices")

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    @property
    def lockstep_depth(self) -> int:
        """Steps for the lock-step walk, or 0 = walk tree by tree."""
        return self.max_depth if self.max_depth <= LOCKSTEP_MAX_DEPTH else 0


def _base_margin(learner: dict[str, Any]) -> float:
    raw = learner["learner_model_param"]["base_score"]
    base = float(json.loads(raw)[0]) if str(raw).startswith("[") else float(raw)
    obj = learner["objective"]["name"]
    if obj == "binary:logistic":          # base_score is stored as a probability
        if not 0.0 < base < 1.0:
            raise ModelLoadError(f"binary:logistic base_score {base} outside (0, 1)")
        b32 = np.float32(base)            # XGBoost: ProbToMargin = -log(1/base - 1) in float32
        return float(-np.log(np.float32(1.0) / b32 - np.float32(1.0)))
    if obj in ("binary:logitraw", "reg:squarederror", "reg:linear"):   # base_score is already a margin
        return base
    raise ModelLoadError(f"objective {obj!r} is not a binary/margin objective the compiled walker supports")


def flatten_booster(booster) -> FlatForest:
    """Parse the booster's JSON model (exact float32 values, unlike the text dump) into a FlatForest."""
    model = json.loads(bytes(booster.save_raw(raw_format="json")))
    learner = model["learner"]
    gb = learner["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise ModelLoadError(f"compiled walker supports gbtree boosters only, not {gb.get('name')!r}")
    mp = learner["learner_model_param"]
    if int(mp.get("num_class", 0)) > 1 or int(mp.get("num_target", 1)) > 1:
        raise ModelLoadError("compiled walker supports single-output (binary) models only")
    trees = gb["model"]["trees"]
    n_feat = int(mp["num_feature"])
    if n_feat >= int(LEAF_BIT):
        raise ModelLoadError(f"too many features ({n_feat}) for the compiled walker")
    parts, roots, offset, max_depth = [], [], 0, 0
    for t in trees:
        if any(int(s) != 0 for s in t.get("split_type", [])):
            raise ModelLoadError("compiled walker does not support categorical splits")
        left = np.asarray(t["left_children"], np.int64)
        right = np.asarray(t["right_children"], np.int64)
        n = left.size
        own = np.arange(n, dtype=np.int64) + offset
        leaf = left < 0
        nd = np.empty(n, NODE_DTYPE)
        nd["left"] = np.where(leaf, own, left + offset)
        nd["right"] = np.where(leaf, own, right + offset)
        feat = np.where(leaf, 0, np.asarray(t["split_indices"], np.int64))
        if (feat >= n_feat).any() or (feat < 0).any():
            raise ModelLoadError("tree splits on a feature index outside the model's features")
        dl = np.asarray(t["default_left"], np.int64).astype(bool)
        nd["feat"] = (feat.astype(np.uint32) | np.where(dl & ~leaf, DEFAULT_LEFT_BIT, np.uint32(0))
                      | np.where(leaf, LEAF_BIT, np.uint32(0)))
        nd["val"] = np.asarray(t["split_conditions"], np.float32)
        parts.append(nd)
        roots.append(offset)
        offset += n
        max_depth = max(max_depth, _tree_depth(left, right))
    nodes = np.concatenate(parts) if parts else np.empty(0, NODE_DTYPE)
    return FlatForest(nodes, np.asarray(roots, np.int32), _base_margin(learner), n_feat, max_depth)


def _tree_depth(left: np.ndarray, right: np.ndarray) -> int:
    """Depth of the deepest leaf (root = 0), level by level from the root."""
    depth, level = 0, np.array([0])
    while True:
        level = level[left[level] >= 0]
        if level.size == 0:
            return depth
        level = np.concatenate([left[level], right[level]])
        depth += 1


def numpy_margin(ff: FlatForest, x: np.ndarray) -> np.ndarray:
    """Vectorised walker (rows × trees at once, one step per tree level) — the no-compiler fallback."""
    n = x.shape[0]
    acc = np.full(n, np.float32(ff.base_margin), np.float32)
    if ff.n_trees == 0:
        return acc.astype(np.float64)
    idx = np.broadcast_to(ff.roots, (n, ff.n_trees)).copy()
    rows = np.arange(n)[:, None]
    left, right, feat, val = ff.nodes["left"], ff.nodes["right"], ff.nodes["feat"], ff.nodes["val"]
    for _ in range(ff.max_depth):                # leaves point to themselves, so extra steps are harmless
        f = feat[idx]
        v = x[rows, (f & FEAT_MASK).astype(np.int64)]
        go_left = np.where(np.isnan(v), (f & DEFAULT_LEFT_BIT) != 0, v < val[idx])
        idx = np.where(go_left, left[idx], right[idx])
    leaves = val[idx]
    for t in range(ff.n_trees):                  # float32 accumulation in tree order, like XGBoost
        acc += leaves[:, t]
    return acc.astype(np.float64)


# ------------------------------------------------------------------------------------------ C walker
_C_SOURCE = r"""
#include <stdint.h>
#include <math.h>
typedef struct { int32_t left; int32_t right; uint32_t feat; float val; } node_t;
#define FMASK 0x3fffffffu
#define LEAF 0x40000000u
#define LANES 8

static inline int go_left(const node_t* nd, const float* x) {
    float v = x[nd->feat & FMASK];
    return (v < nd->val) | ((v != v) & (int)(nd->feat >> 31));   /* NaN: default-left bit */
}

/* P(up) (or the margin) = base + sum of leaves, float32 accumulation in tree order like XGBoost's CPU
   predictor. depth > 0: trees are walked LANES at a time in lock-step for exactly `depth` steps (leaves point
   to themselves), which overlaps the node-load latency chains; depth == 0: tree by tree until a leaf.
   Rows holding an infinity give NaN and are counted in the return value. */
int64_t xgbw_predict(const node_t* nodes, const int32_t* roots, int32_t n_trees, int32_t depth, float base,
                     const float* X, int64_t n_rows, int32_t n_feat, int32_t want_margin, double* out) {
    int64_t n_bad = 0;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float* x = X + r * (int64_t)n_feat;
        int bad = 0;
        for (int32_t f = 0; f < n_feat; ++f) bad |= isinf(x[f]);
        if (bad) { out[r] = NAN; ++n_bad; continue; }
        float acc = base;
        int32_t t = 0;
        if (depth > 0) {
            for (; t + LANES <= n_trees; t += LANES) {
                int32_t idx[LANES];
                for (int k = 0; k < LANES; ++k) idx[k] = roots[t + k];
                for (int32_t d = 0; d < depth; ++d)
                    for (int k = 0; k < LANES; ++k) {
                        const node_t* nd = nodes + idx[k];
                        idx[k] = go_left(nd, x) ? nd->left : nd->right;
                    }
                for (int k = 0; k < LANES; ++k) acc += nodes[idx[k]].val;
            }
        }
        for (; t < n_trees; ++t) {
            const node_t* nd = nodes + roots[t];
            while (!(nd->feat & LEAF)) nd = nodes + (go_left(nd, x) ? nd->left : nd->right);
            acc += nd->val;
        }
        out[r] = want_margin ? (double)acc : 1.0 / (1.0 + exp(-(double)acc));
    }
    return n_bad;
}

#ifdef XGBW_PYEXT
/* CPython entry point (METH_FASTCALL, buffer protocol): ~10x less call overhead than ctypes.
   predict(nodes, roots, x, out, n_trees, depth, base, n_feat, want_margin) -> rows with inf */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject* py_predict(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 9) { PyErr_SetString(PyExc_TypeError, "predict takes 9 arguments"); return NULL; }
    long n_trees = PyLong_AsLong(args[4]), depth = PyLong_AsLong(args[5]), n_feat = PyLong_AsLong(args[7]);
    long want_margin = PyLong_AsLong(args[8]);
    double base = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (n_feat <= 0 || n_trees < 0 || depth < 0) { PyErr_SetString(PyExc_ValueError, "bad sizes"); return NULL; }
    Py_buffer bn, br, bx, bo;
    if (PyObject_GetBuffer(args[0], &bn, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &br, PyBUF_C_CONTIGUOUS) < 0) { PyBuffer_Release(&bn); return NULL; }
    if (PyObject_GetBuffer(args[2], &bx, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bn); PyBuffer_Release(&br); return NULL; }
    if (PyObject_GetBuffer(args[3], &bo, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&bn); PyBuffer_Release(&br); PyBuffer_Release(&bx); return NULL; }
    PyObject* res = NULL;
    int64_t n_rows = bx.len / (4 * (Py_ssize_t)n_feat);
    if (bx.len % (4 * (Py_ssize_t)n_feat) != 0 || bo.len < 8 * n_rows || br.len < 4 * (Py_ssize_t)n_trees
        || (n_trees > 0 && bn.len < (Py_ssize_t)sizeof(node_t))) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match");
    } else {
        int64_t bad;
        if (n_rows * (int64_t)n_trees > 65536) {
            Py_BEGIN_ALLOW_THREADS
            bad = xgbw_predict(bn.buf, br.buf, (int32_t)n_trees, (int32_t)depth, (float)base, bx.buf, n_rows,
                               (int32_t)n_feat, (int32_t)want_margin, bo.buf);
            Py_END_ALLOW_THREADS
        } else {
            bad = xgbw_predict(bn.buf, br.buf, (int32_t)n_trees, (int32_t)depth, (float)base, bx.buf, n_rows,
                               (int32_t)n_feat, (int32_t)want_margin, bo.buf);
        }
        res = PyLong_FromLongLong(bad);
    }
    PyBuffer_Release(&bn); PyBuffer_Release(&br); PyBuffer_Release(&bx); PyBuffer_Release(&bo);
    return res;
}
static PyMethodDef methods[] = {{"predict", (PyCFunction)(void (*)(void))py_predict, METH_FASTCALL, NULL},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_xgbw", NULL, -1, methods};
PyMODINIT_FUNC PyInit__xgbw(void) { return PyModule_Create(&mod); }
#endif
"""
_CFLAGS = ["-O3", "-fPIC", "-shared", "-fno-fast-math"]


def _cache_dirs() -> list[Path]:
    """Where the walker may be cached, best first: TRADINGD_CACHE_DIR, systemd's CACHE_DIRECTORY /
    STATE_DIRECTORY (the hardened unit has ProtectHome=yes), XDG_CACHE_HOME or ~/.cache, then the temp dir."""
    out = []
    for env, sub in (("TRADINGD_CACHE_DIR", ""), ("CACHE_DIRECTORY", ""), ("STATE_DIRECTORY", "cache"),
                     ("XDG_CACHE_HOME", "tradingd")):
        v = os.environ.get(env)
        if v:
            out.append(Path(v.split(":")[0]) / sub / "xgb_walker")
    out.append(Path.home() / ".cache" / "tradingd" / "xgb_walker")
    out.append(Path(tempfile.gettempdir()) / f"tradingd-{os.getuid() if hasattr(os, 'getuid') else 0}" / "xgb_walker")
    return out


def _compiler(cc: str | None) -> tuple[str, list[str]] | None:
    cc = cc or os.environ.get("CC") or "gcc"
    if shutil.which(cc) is None:
        return None
    try:
        ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        return None
    return cc, ver


def compile_walker(cache_dir: Path | None = None, cc: str | None = None, *, pyext: bool = True) -> Path | None:
    """Build (or reuse) the walker: a CPython extension when Python headers exist (``pyext``), else a plain
    shared object for ctypes. Cached by sha256 of source + compiler + flags (+ Python ABI); None when no
    working compiler."""
    import sysconfig
    found = _compiler(cc)
    if found is None:
        log.warning("xgb_walker_no_compiler", cc=cc or os.environ.get("CC") or "gcc")
        return None
    cc, ver = found
    flags = list(_CFLAGS)
    suffix = ".so"
    if pyext:
        inc = sysconfig.get_paths().get("include", "")
        if not (Path(inc) / "Python.h").is_file():
            return None
        flags += ["-DXGBW_PYEXT", f"-I{inc}"]
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    key = hashlib.sha256("\0".join([_C_SOURCE, *ver, *flags, suffix, os.uname().machine]).encode()).hexdigest()[:16]
    name = ("_xgbw" + suffix) if pyext else "xgbw.so"
    for cache in ([Path(cache_dir)] if cache_dir else _cache_dirs()):
        target = cache / key / name
        if target.is_file():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return _build(cc, flags, target, pyext)
        except (OSError, subprocess.SubprocessError) as e:   # read-only / protected location: try the next one
            log.warning("xgb_walker_cache_unwritable", dir=str(cache), error=str(e))
    return None


def _build(cc: str, flags: list[str], target: Path, pyext: bool) -> Path | None:
    with tempfile.TemporaryDirectory(dir=target.parent) as td:
        src = Path(td) / "xgbw.c"
        src.write_text(_C_SOURCE)
        out = Path(td) / target.name
        r = subprocess.run([cc, *flags, "-o", str(out), str(src), "-lm"], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            log.warning("xgb_walker_compile_failed", cc=cc, pyext=pyext, stderr=r.stderr[-2000:])
            return None
        os.replace(out, target)           # atomic: concurrent builders cannot expose a half-written file
    log.info("xgb_walker_compiled", path=str(target), pyext=pyext)
    return target


def _load_pyext(path: Path):
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.ExtensionFileLoader("_xgbw", str(path))
    spec = importlib.util.spec_from_file_location("_xgbw", str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class CompiledCPUEngine(XGBEngine):
    """Flattened trees walked by the compiled C function (see module doc).

    Walker, best first: CPython extension (``walker="pyext"``), ctypes shared object (``"ctypes"``, when Python
    headers are missing), numpy (``"numpy"``, no compiler; backend then reports ``numpy-cpu``).
    Options: ``cache_dir``, ``cc``, ``walker`` (force one of the three, for tests/benchmarks)."""

    backend = "compiled-cpu"
    device = "cpu"

    def _open(self, model: XGBoostModel, meta: dict[str, Any]) -> None:
        ff = flatten_booster(model.booster)
        if ff.n_features != int(meta["n_features"]):
            raise ModelLoadError(f"booster has {ff.n_features} features, metadata says {meta['n_features']}")
        self._ff = ff
        self._consts = (ff.n_trees, ff.lockstep_depth, ff.base_margin, ff.n_features)
        want = self.options.get("walker")
        cache, cc = self.options.get("cache_dir"), self.options.get("cc")
        self.walker, self._call = "numpy", None
        if want in (None, "pyext"):
            so = compile_walker(cache, cc, pyext=True)
            try:
                fn = _load_pyext(so).predict if so is not None else None
            except ImportError as e:
                log.warning("xgb_walker_pyext_unloadable", path=str(so), error=str(e))
                fn = None
            if fn is not None:
                self._call = lambda x, out, m: fn(ff.nodes, ff.roots, x, out, *self._consts, m)
                self.walker = "pyext"
        if self._call is None and want in (None, "ctypes"):
            so = compile_walker(cache, cc, pyext=False)
            try:
                lib = ctypes.CDLL(str(so)) if so is not None else None
            except OSError as e:
                log.warning("xgb_walker_so_unloadable", path=str(so), error=str(e))
                lib = None
            if lib is not None:
                fn = lib.xgbw_predict
                fn.restype = ctypes.c_int64
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_float,
                               ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
                np_, rp = ff.nodes.ctypes.data, ff.roots.ctypes.data
                nt, dp, bm, nf = self._consts
                self._lib = lib
                self._call = lambda x, out, m: fn(np_, rp, nt, dp, bm, x.ctypes.data, x.shape[0], nf, m,
                                                  out.ctypes.data)
                self.walker = "ctypes"
        self.backend = "compiled-cpu" if self._call is not None else "numpy-cpu"
        if self._call is None:
            log.warning("xgb_compiled_fallback", backend=self.backend,
                        reason="numpy walker requested" if want == "numpy" else "no C compiler / compile failed")
        self._self_check(model, meta)

    def _self_check(self, model: XGBoostModel, meta: dict[str, Any]) -> None:
        """Refuse the model unless the walker equals the booster (within MATCH_TOL) on probe rows with NaNs."""
        self.meta, self.n_features = meta, int(meta["n_features"])
        x = self.representative_rows(256, seed=1)
        x[0, :] = np.nan                                    # all missing
        want = model.predict(x)
        got = self._run(x)
        err = float(np.max(np.abs(want - got)))
        if not err <= MATCH_TOL:
            raise ModelLoadError(f"{self.backend}: walker disagrees with the booster by {err:.3g} "
                                 f"(> {MATCH_TOL}); refusing this model")
        self._check_err = err

    def _walk(self, x: np.ndarray, want_margin: int) -> np.ndarray:
        if self._call is None:
            if np.isinf(x).any():
                raise ValueError("XGBoost input contains inf (NaN is the only accepted missing value)")
            m = numpy_margin(self._ff, x)
            return m if want_margin else 1.0 / (1.0 + np.exp(-m))
        out = np.empty(x.shape[0], np.float64)
        if self._call(x, out, want_margin):
            raise ValueError("XGBoost input contains inf (NaN is the only accepted missing value)")
        return out

    def margin(self, x: np.ndarray) -> np.ndarray:
        """Raw margins (for tests): float32 C-contiguous (n, n_features) input."""
        return self._walk(np.ascontiguousarray(x, dtype=np.float32), 1)

    def _check_inf(self, x: np.ndarray) -> None:
        """The C walker checks for inf itself (cheaper than a numpy pass); see predict."""

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._walk(x, 0)

    def _extra_info(self) -> dict[str, Any]:
        return {"walker": self.walker, "trees": self._ff.n_trees, "nodes": int(self._ff.nodes.size),
                "max_depth": self._ff.max_depth, "max_abs_err_vs_booster": getattr(self, "_check_err", None)}


XGB_ENGINES: dict[str, type[XGBEngine]] = {
    "native-cpu": NativeCPUEngine,
    "native-cuda": NativeCUDAEngine,
    "compiled-cpu": CompiledCPUEngine,
}


def backend_available(backend: str) -> tuple[bool, str]:
    """Can ``backend`` run here, and why (for ``tradingd doctor`` / engines.backends.probe)."""
    try:
        import xgboost
    except ImportError:
        return False, "xgboost not installed"
    if backend == "native-cpu":
        return True, f"xgboost {xgboost.__version__}"
    if backend == "compiled-cpu":
        if compile_walker(pyext=True) is not None:
            return True, "C walker (CPython extension)"
        if compile_walker(pyext=False) is not None:
            return True, "C walker (ctypes; Python headers missing)"
        return True, "no C compiler: numpy walker (reports numpy-cpu, ~100x slower)"
    if backend == "native-cuda":
        if not xgboost.build_info().get("USE_CUDA"):
            return False, f"xgboost {xgboost.__version__} is a CPU-only build (USE_CUDA=False)"
        if select_device() != "cuda":
            return False, "CUDA build of xgboost but no usable GPU"
        return True, f"xgboost {xgboost.__version__} CUDA build + GPU"
    return False, f"unknown XGBoost backend {backend!r}"


def make_xgb_engine(backend: str = "auto", **options: Any) -> XGBEngine:
    """Engine for a config backend name; ``auto`` = native-cuda on a CUDA build with a GPU, else compiled-cpu."""
    if backend == "auto":
        backend = "native-cuda" if select_device() == "cuda" else "compiled-cpu"
        log.info("xgb_backend_auto", backend=backend)
    try:
        cls = XGB_ENGINES[backend]
    except KeyError:
        raise ValueError(f"unknown XGBoost backend {backend!r}; choose one of {['auto', *XGB_ENGINES]}") from None
    return cls(**options)
