# The suite's image: every stage of a run (python -m jobs.*) and the launcher
# (python -m pipeline.launch --cluster k8s) run from it. Build and push it (README, "Kubernetes and
# the container image"):
#   make image IMAGE=registry.example.com/masksuite:0.1.0 && podman push registry.example.com/masksuite:0.1.0
#   (or docker build -t registry.example.com/masksuite:0.1.0 . && docker push ...)
# Where the base cannot be pulled, `make image` builds this file unchanged on a stand-in of it
# (container/standin-base.sh), for tests only.
#
# Official PyTorch runtime image, pinned. PyTorch's CUDA 12.6 builds still ship kernels for V100
# (sm_70), which its CUDA 12.8+ builds dropped; the driver on the nodes must support CUDA 12.6.
# It brings Python 3.11 (/opt/conda/bin first on PATH, pip included), torch 2.7.1 and torchvision
# 0.22.1, so pip keeps them and only adds the suite's other dependencies. It has no C compiler, so
# train.compile=true is refused in this image (pipeline/ml/device.py require_compiler).
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/masksuite
# Only what the package needs (see .dockerignore): no data, no outputs, no credentials.
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY jobs ./jobs
# A regular (not editable) install: the code lives in site-packages, read-only at run time.
RUN pip install --no-cache-dir . \
    && groupadd --gid 10001 masksuite \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin masksuite

# Kubernetes pods mount a writable emptyDir on /scratch and /tmp (the root filesystem is
# read-only there); HOME and the caches point into it.
ENV HOME=/scratch \
    XDG_CACHE_HOME=/scratch/cache \
    TORCH_HOME=/scratch/cache/torch
WORKDIR /scratch
# The code version the runs record and fingerprint (pipeline/run/state.py code_version): the package
# version plus the commit the image was built from (make image passes it).
ARG CODE_VERSION=""
ENV MASKSUITE_CODE_VERSION=${CODE_VERSION}
# A numeric user, so that Kubernetes can check runAsNonRoot.
USER 10001:10001

# A batch image: no server, so no HEALTHCHECK; Kubernetes Jobs follow the process's exit status.
# checkov:skip=CKV_DOCKER_2: batch jobs, no long-running service to probe; Kubernetes Jobs use exit status
CMD ["python", "-m", "pipeline.launch", "--help"]
