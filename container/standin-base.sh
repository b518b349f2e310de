#!/usr/bin/env bash
# Make the base image the Dockerfile builds FROM, for machines that cannot pull it.
#
#   bash container/standin-base.sh pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
#
# 1. If the image is already in podman's storage, nothing is done.
# 2. Else it is pulled (a machine with registry access gets the real base).
# 3. Else (offline, as on our build machines) a STAND-IN is made and tagged with the real base's
#    name, so that the Dockerfile is built unchanged: a debootstrapped Debian bookworm with Python
#    3.11, and at /opt/conda a Python environment holding the same torch / torchvision the real
#    base brings (constraints/torch-v100.txt: PyPI's 2.10.0 is the CUDA 12.8 build, with V100 sm_70
#    kernels), the same
#    PATH, WORKDIR and user (root) as the real base's Dockerfile. Like the real base it has no C
#    compiler. It is NOT the real base: no conda, Debian instead of Ubuntu 22.04, and it trusts
#    this machine's extra CA certificates so that pip can reach the package index from a build.
#
# Debian packages come from the mirror this machine's apt uses (cached in $MASKSUITE_CACHE, default
# /var/cache/masksuite); Python packages from the package index. About 5 minutes and 5.8 GB.
set -euo pipefail

BASE=${1:?usage: standin-base.sh IMAGE}
# The V100 route's pins (constraints/torch-v100.txt), which the real base's tag names.
PINS="$(dirname "$0")/../constraints/torch-v100.txt"
TORCH=${STANDIN_TORCH:-$(grep -E '^(torch|torchvision)==' "$PINS" | tr '\n' ' ')}
TORCH_VERSION=$(sed -n 's/^torch==//p' "$PINS")
SUITE=${STANDIN_SUITE:-bookworm}
CACHE=${MASKSUITE_CACHE:-/var/cache/masksuite}

# podman import names an unqualified image localhost/...; the Dockerfile's FROM means docker.io.
case "$BASE" in
  */*/*) TAG=$BASE ;;
  *) TAG=docker.io/$BASE ;;
esac

if podman image exists "$BASE"; then
  echo "base image $BASE: present"
  exit 0
fi
if [ "${STANDIN_ONLY:-0}" != 1 ] && timeout 120 podman pull --quiet "$BASE" >/dev/null 2>&1; then
  echo "base image $BASE: pulled"
  exit 0
fi
echo "base image $BASE: cannot be pulled here; making a stand-in (Debian $SUITE + $TORCH)"

# The Debian mirror this machine's apt uses (debootstrap's default otherwise).
mirror=$(grep -hsm1 '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' || true)
if [ -z "$mirror" ]; then
  mirror=$(grep -hsm1 '^deb ' /etc/apt/sources.list | awk '{print $2}' || true)
fi

work=$(mktemp -d /var/tmp/masksuite-standin.XXXXXX)
rootfs="$work/rootfs"
cleanup() {
  for m in proc dev; do umount "$rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$CACHE/debootstrap"
debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$rootfs" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }

# Trust this machine's extra CA certificates (a proxy in front of the package index).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
# Commands in the chroot get a clean environment, not this machine's pip settings.
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs" "$@"; }
in_root update-ca-certificates >/dev/null 2>&1
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
# pip anywhere in the image checks certificates against the system store.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"

mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"

# The real base's Python lives in /opt/conda (PATH first): a venv there plays its part.
in_root python3 -m venv /opt/conda
# shellcheck disable=SC2086
in_root /opt/conda/bin/pip install --quiet --progress-bar off --no-cache-dir $TORCH
in_root /opt/conda/bin/python -c \
  'import torch, torchvision; print("stand-in: torch", torch.__version__, "torchvision", torchvision.__version__, "kernels", " ".join(torch._C._cuda_getArchFlags().split()))'

for m in proc dev; do umount "$rootfs/$m"; done
rm -rf "$rootfs/root/.cache" "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
: >"$rootfs/etc/resolv.conf"

# The real base's environment (pytorch/pytorch Dockerfile, stage "official").
tar -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NVIDIA_VISIBLE_DEVICES=all' \
  --change 'ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility' \
  --change 'ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64' \
  --change "ENV PYTORCH_VERSION=$TORCH_VERSION" \
  --change 'LABEL org.opencontainers.image.description=stand-in for the real base, made offline by container/standin-base.sh' \
  --change 'WORKDIR /workspace' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "base image $BASE: stand-in made ($TAG)"
