# The suite's image: every stage of a run (python -m jobs.*) and the launcher
# (python -m pipeline.launch --cluster k8s) run from it. Build and push it (docs/kubernetes.md):
#   make image IMAGE=registry.example.com/masksuite:0.1.0 && podman push registry.example.com/masksuite:0.1.0
#   (or docker build -t registry.example.com/masksuite:0.1.0 . && docker push ...)
# Where the base cannot be pulled, `make image` builds this file unchanged on a stand-in of it
# (container/standin-base.sh), for tests only.
#
# Official PyTorch runtime image, pinned: torch 2.10.0 / torchvision 0.25.0, the CUDA 12.8 build,
# the last with kernels for V100 (sm_70; PyTorch's 2.11+ CUDA builds dropped Volta) and the first
# not affected by GHSA-63cw-57p8-fm3p (a torch.load weights_only bypass). The same pins as
# constraints/torch-v100.txt; the nodes' driver must run CUDA 12.8 (R570+, or R525+ with CUDA's
# minor-version compatibility). /opt/conda/bin is first on PATH (pip included), so pip keeps torch
# and only adds the suite's other dependencies. It has no C compiler, so train.compile=true is
# refused in this image (pipeline/ml/device.py require_compiler).
FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/masksuite
# Only what the package needs (see .dockerignore): no data, no outputs, no credentials.
COPY requirements/image.lock ./requirements/
# Every dependency exactly as locked, each file checked against its SHA-256 (requirements/image.lock,
# `make lock`); nothing is resolved at build time. torch and torchvision are the base image's.
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/image.lock
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY jobs ./jobs
# A regular (not editable) install of the suite alone (its dependencies are in place, and the
# build backend came from the lock): the code lives in site-packages, read-only at run time.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && groupadd --gid 10001 masksuite \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin masksuite

# The code version the runs record and fingerprint (pipeline/run/state.py code_version): the package
# version plus the commit the image was built from (make image passes it).
# Podman/buildah reuse a cached ENV layer whatever the build-arg's value (its cache key is the
# unexpanded line), so a commit that changes nothing copied kept the previous commit's version;
# a RUN's cache key holds the build-args it sees, so this layer and those after it are rebuilt.
# (It runs before WORKDIR /scratch: a RUN there would create /scratch owned by root.)
ARG CODE_VERSION=""
RUN echo "code version: ${CODE_VERSION:-unknown}"
ENV MASKSUITE_CODE_VERSION=${CODE_VERSION}
# Kubernetes pods mount a writable emptyDir on /scratch and /tmp (the root filesystem is
# read-only there); HOME and the caches point into it.
ENV HOME=/scratch \
    XDG_CACHE_HOME=/scratch/cache \
    TORCH_HOME=/scratch/cache/torch
WORKDIR /scratch
# A numeric user, so that Kubernetes can check runAsNonRoot.
USER 10001:10001

# A batch image: no server, so no HEALTHCHECK; Kubernetes Jobs follow the process's exit status.
# checkov:skip=CKV_DOCKER_2: batch jobs, no long-running service to probe; Kubernetes Jobs use exit status
CMD ["python", "-m", "pipeline.launch", "--help"]
