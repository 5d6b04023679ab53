#!/usr/bin/env bash
# Image build step (deploy/Dockerfile): a venv at $VENV with the project's dependencies for one extra.
#   install.sh deps EXTRA   pyproject.toml + constraints.txt only (a cached layer: source edits don't redo it)
#   install.sh app          the project itself, --no-deps (its dependencies are the layer above)
# EXTRA=cpu: torch==2.13.0 from pip's configured sources (a CPU wheel where one is configured), then `.[cpu]`.
# EXTRA=gpu: the base image's torch (NVIDIA's build, with its CUDA/cuDNN/TensorRT) is kept, so the venv sees the
# system site-packages and our torch pin is dropped, as is every pin the base image sets itself ($PIP_CONSTRAINT:
# its packages were built together). On aarch64 (GH200) PyPI has no onnxruntime-gpu wheel: CPU onnxruntime is
# installed instead and the LSTM runs on the GPU through torch-cuda or TensorRT (`tradingd doctor` shows which).
set -euo pipefail
VENV=${VENV:-/opt/tradingd/venv}
step=${1:?usage: install.sh deps EXTRA | app}
py="$VENV/bin/python"
pip=("$py" -m pip install --no-cache-dir --progress-bar off --no-build-isolation)

if [ "$step" = app ]; then
  "${pip[@]}" --no-deps .
  "$VENV/bin/tradingd" --version
  exit 0
fi

extra=${2:?usage: install.sh deps EXTRA}
case "$extra" in cpu|gpu) ;; *) echo "install.sh: EXTRA must be cpu or gpu, not '$extra'" >&2; exit 2 ;; esac
python3 -m venv --system-site-packages "$VENV"
"${pip[@]}" -q 'setuptools>=68' wheel
[ -f README.md ] || touch README.md  # pyproject names it; the source (and README) arrive in the next layer

# requirements for this extra (+ the constraints to apply), one place: pyproject.toml and constraints.txt
"$py" - "$extra" >/tmp/reqs.txt <<'PY'
import os, platform, re, sys, tomllib
extra = sys.argv[1]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
name = lambda line: norm(re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0])
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][extra]
skip = set()
if extra == "gpu":
    skip.add("torch")  # the base image's CUDA torch stays
    base = os.environ.get("PIP_CONSTRAINT", "")
    if base and os.path.isfile(base):  # NVIDIA's images pin what they built together: their pins win
        skip |= {name(l) for l in open(base) if l.strip() and not l.startswith("#")}
    if platform.machine() == "aarch64":  # no onnxruntime-gpu wheel for aarch64 on PyPI
        deps = [d.replace("onnxruntime-gpu", "onnxruntime") for d in deps]
with open("/tmp/constraints.txt", "w") as f:
    f.writelines(l for l in open("constraints.txt") if l.strip() and name(l) not in skip)
print("\n".join(deps))
PY
mapfile -t reqs </tmp/reqs.txt
if [ "$extra" = cpu ]; then
  "${pip[@]}" -c /tmp/constraints.txt torch==2.13.0
else
  "$py" -c 'import torch; print("base image torch", torch.__version__, "CUDA", torch.version.cuda)'
fi
# the project with no packages yet (only pyproject.toml here) installs exactly its dependencies
"${pip[@]}" -c /tmp/constraints.txt . "${reqs[@]}"
"$py" -c 'import torch, xgboost, onnxruntime as o; print("torch", torch.__version__, "xgboost", xgboost.__version__, "onnxruntime", o.__version__)'
