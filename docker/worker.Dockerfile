# syntax=docker/dockerfile:1
# The AI node's Celery worker for NVIDIA GPUs (it also runs on CPU when no GPU is given).
# Build context: the repository root (see docker-compose.yml).
#
# CUDA: torch 2.14.1 in requirements.lock is PyPI's CUDA 13 build (nvidia-*-cu13 wheels carry
# their own CUDA runtime and cuDNN), so the base image is CUDA 13 too, and the host needs an
# NVIDIA driver that supports CUDA 13 (R580 or newer). Python 3.11 comes from the deadsnakes
# archive, as Ubuntu 22.04's own Python is 3.10.

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04 AS python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*


# Build stage: compilers for any source distribution in the lock; they stay out of the image.
FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/ainode

# Dependencies first (the large layer: torch and CUDA libraries), from the locks only, so a code
# change does not reinstall them. As scripts/bootstrap.sh, except that ONNX Runtime is
# onnxruntime-gpu (requirements-gpu.lock) instead of the CPU package: the two must not be
# installed together (same module), so the CPU line is left out of the lock.
COPY requirements.lock requirements-gpu.lock ./
RUN python3.11 -m venv /opt/ainode/venv \
 && venv/bin/pip install -q -U "pip>=24" setuptools wheel \
 && grep -v -E '^onnxruntime==' requirements.lock > /tmp/cpu-less.lock \
 && venv/bin/pip install -q -r /tmp/cpu-less.lock -r requirements-gpu.lock \
 && ! venv/bin/pip show -q onnxruntime 2>/dev/null \
 && SAM2_BUILD_CUDA=0 venv/bin/pip install -q --no-build-isolation --no-deps "sam2==1.1.0" \
 && venv/bin/pip install -q --no-deps "TotalSegmentator==2.18.0"

COPY pyproject.toml README.md ./
COPY src ./src
COPY plugin ./plugin
COPY worker ./worker
COPY configs ./configs
COPY scripts ./scripts
COPY routing-rules.yaml ./
COPY docker/entrypoint.py ./docker/
RUN venv/bin/pip install -q --no-deps -e .


# Runtime stage: the venv and the checkout at the same path (the editable install points there).
FROM python AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ainode --create-home ainode
COPY --from=build /opt/ainode /opt/ainode
ENV PATH=/opt/ainode/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/ainode
WORKDIR /opt/ainode
USER ainode
# A GPU worker: without usable CUDA it refuses the ainode.gpu.* queues and says why (/ai/health).
ENV AINODE_WORKER_DEVICE=cuda
# The CUDA image's entry point prints its banner and runs this command.
CMD ["python", "docker/entrypoint.py", "worker"]
