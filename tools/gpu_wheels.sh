#!/usr/bin/env bash
# Wheels of what geeps imports beyond what the GPU machine has, for tools/gpu_check.sh.
#
#     tools/gpu_wheels.sh            # into .gpu-wheels/ (ignored by git), needs network
#
# The GPU machine has Python 3.12 with CUDA 13 builds of torch and CuPy, numpy, pyyaml,
# prometheus-client, pytest and scikit-learn, and no network. This downloads pyzmq,
# orjson and jsonschema, with their dependencies, as binary wheels for CPython 3.12 on
# manylinux x86-64; gpu_check.sh installs them there with `pip install --no-index`.
# Bring .gpu-wheels/ with the checkout (it is ignored: copy it, or name it in the
# device tool's `carry`).
set -eu -o pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/.gpu-wheels}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
"$PY" -m pip download --quiet --dest "$DEST" --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    "pyzmq>=25" "orjson>=3.8" "jsonschema>=4.18"
ls -1 "$DEST"/*.whl
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1))"
