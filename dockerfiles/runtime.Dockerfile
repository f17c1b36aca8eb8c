# syntax=docker/dockerfile:1
# The GeePS runtime image: parameter-server shards and training workers run in it.
# Build from the repository root:
#
#   docker build -f dockerfiles/runtime.Dockerfile -t geeps/runtime:0.1.0 .
#
# A GeePSJob's spec.image names it; the operator runs `geeps server` in server pods and
# the job's command (e.g. python examples/02-digits-cnn/train.py) in worker pods, from
# /workspace, where the examples are.
#
# A CPU variant (no CUDA, no CuPy) for machines without a GPU, from the same file:
#
#   docker build -f dockerfiles/runtime.Dockerfile -t geeps/runtime:0.1.0-cpu \
#       --build-arg BASE_IMAGE=python:3.11-slim-bookworm --build-arg SYSTEM_PYTHON= \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu --build-arg CUPY_VERSION= .
#
# (tools/build_images.py does this with buildah, where no Docker engine runs.)
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG BUILD_IMAGE=python:3.12-slim-bookworm

# --- build: the project's wheel (pure Python; the CUDA kernels compile at run time) ---
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
COPY examples/geeps_examples/ examples/geeps_examples/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- final: CUDA runtime libraries (CuPy's NVRTC and cuBLAS come from here) ---
FROM ${BASE_IMAGE}
# torch's CUDA build and CuPy's CUDA 12 build must match the base image's CUDA major
# version; change the three together.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG CUPY_VERSION=13.6.0
# The CUDA base has no Python: Ubuntu 24.04's (3.12) comes from apt. A Python base (the
# CPU variant) has its own and passes SYSTEM_PYTHON empty.
ARG SYSTEM_PYTHON="python3 python3-venv"
# Extra wheel directories pip may use (a local CPU torch), bind-mounted by the builder.
ARG PIP_FIND_LINKS=""
# A virtualenv keeps pip away from the system packages.
# Not pinned: Ubuntu drops superseded package versions from its archive, so a pin would
# break the build at the next security update; the base image tag fixes the release.
# SYSTEM_PYTHON is a list of packages, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN if [ -n "$SYSTEM_PYTHON" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $SYSTEM_PYTHON \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# An empty TORCH_INDEX means the default index (and PIP_FIND_LINKS); an empty
# CUPY_VERSION, no CuPy (the CPU variant: geeps runs its NumPy twins). Both are pinned;
# hadolint takes the optional --index-url for an unpinned package.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==${TORCH_VERSION}" \
    && if [ -n "$CUPY_VERSION" ]; then \
        pip install --no-cache-dir "cupy-cuda12x==${CUPY_VERSION}"; fi
# The wheel is bind-mounted from the build stage, so no copy of it stays in a layer.
# Its torch requirement is a range the CUDA build above already satisfies, so pip keeps
# that build instead of fetching the default one.
# The [examples] extra brings scikit-learn, whose digits examples 01 and 02 train on;
# the wheel built above is the only geeps pip can find, so its version is fixed.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels "geeps[examples]"
# A fixed numeric UID, so the kubelet can verify runAsNonRoot. Its HOME is not writable
# under a read-only root filesystem: the operator's pods point CuPy's kernel cache and
# other caches at their /tmp volume (geeps_operator.manifests.WRITABLE_CACHES).
RUN groupadd --gid 10001 geeps \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/geeps \
       --shell /usr/sbin/nologin geeps
WORKDIR /workspace
COPY --chown=10001:10001 examples/ examples/
USER 10001:10001
# `geeps server` serves one shard (configured by GEEPS_*); `docker run IMAGE run
# examples/01-minimal/job.yaml` runs a whole job in one container. Kubernetes' command
# replaces the entrypoint in worker pods.
ENTRYPOINT ["geeps"]
CMD ["server"]
