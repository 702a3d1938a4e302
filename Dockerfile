# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target api    -t ldm-serve-api .     # FastAPI + uvicorn, no torch
#   docker build --target worker -t ldm-serve-worker .  # resident diffusers pipeline
# The worker gets PyPI's torch, whose Linux wheel is the CUDA build (runs on CPU too).
# For a smaller CPU-only worker:
#   docker build --target worker \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t ldm-serve-worker:cpu .

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
# Shared by both images: Python settings, an unprivileged user and its /data folders.
FROM python:${PYTHON_VERSION}-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LDM_STORAGE_URL=file:///data/images \
    LDM_MODEL_CACHE=/data/models

# /data/images is shared by API and worker; /data/models holds the worker's weights. Both
# belong to the runtime user, and named volumes mounted there start with that ownership.
# No VOLUME instruction: it would add an anonymous volume to every container; compose mounts
# named volumes on these paths instead.
RUN groupadd --system --gid 10001 ldm \
    && useradd --system --uid 10001 --gid ldm --create-home --home-dir /home/ldm ldm \
    && mkdir -p /data/images /data/models \
    && chown -R ldm:ldm /data

WORKDIR /srv/ldm-serve

# ---------------------------------------------------------------------------------------------
# The API: light, no torch. Installs only the base dependencies of pyproject.toml.
# (Installing as root, then running as ldm: the installed code is read-only to the service.)
FROM base AS api

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# ldm, by number so that runtimes can verify it is not root (e.g. Kubernetes runAsNonRoot).
USER 10001:10001
ENV LDM_HOST=0.0.0.0 \
    LDM_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LDM_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------------------------------------
# The worker: torch first, pinned, so pip never resolves an unpinned torch for `.[worker]`.
FROM base AS worker

ARG TORCH_VERSION=2.13.0
# Empty: PyPI (CUDA build on Linux). Set to a PyTorch wheel index, e.g. the CPU one, to change.
ARG TORCH_INDEX_URL=

# Its own layer before the source is copied: code changes do not re-download torch.
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# The constraint keeps the torch installed above (a local version such as 2.13.0+cpu
# satisfies ==2.13.0) whatever diffusers, transformers or accelerate ask for.
RUN echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt ".[worker]" \
    && rm -rf /tmp/torch-constraint.txt build ./*.egg-info

# ldm, as in the api stage.
USER 10001:10001
# Hub downloads and their metadata stay on the models volume too.
ENV HF_HOME=/data/models/huggingface
# Loading the model (tiny-shapes ships in the image; hub weights download at first start) comes
# before the worker registers in Redis: a long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python", "-m", "worker.healthcheck"]
CMD ["python", "-m", "worker"]
