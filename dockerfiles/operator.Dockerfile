# syntax=docker/dockerfile:1
# The GeePS operator image. Build from the repository root:
#
#   docker build -f dockerfiles/operator.Dockerfile -t geeps/operator:0.1.0 .
#
# Install it with the Helm chart in charts/geeps-operator (image.repository/tag).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project's wheel, and a virtualenv with what the operator imports ---
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
COPY examples/geeps_examples/ examples/geeps_examples/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
# The project's own dependencies include torch and numpy for the training runtime; the
# operator never imports them, so the wheel goes in with --no-deps next to the short
# list the operator does import (tests check that list against its imports).
COPY dockerfiles/operator-requirements.txt /tmp/operator-requirements.txt
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir -r /tmp/operator-requirements.txt \
    && /venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl

# --- final: the same slim Python, the virtualenv, no compilers or pip caches ---
FROM ${PYTHON_IMAGE}
# A fixed numeric UID, so the kubelet can verify runAsNonRoot (the chart runs as 10001).
RUN groupadd --gid 10001 geeps \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin geeps
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# The operator's own console script (`geeps operator` is the same command, found through
# an entry point). The chart passes --all-namespaces or --namespace, --health-port and --metrics-port.
ENTRYPOINT ["geeps-operator"]
