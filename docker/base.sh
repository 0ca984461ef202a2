#!/usr/bin/env bash
# Build the Debian base image for EdgeFarm's containers from Debian packages alone, for machines
# that reach Debian's mirror but no container registry: debootstrap a minimal bookworm into a
# folder, then `docker import` it. Idempotent: an image already there is kept (--rebuild makes it
# again). The Dockerfiles take it as their base with --build-arg BASE=edgefarm-base:bookworm.
#
#   docker/base.sh [--rebuild] [--tag NAME:TAG]
#
# Environment: DEBIAN_MIRROR (default: the first Debian mirror apt uses here, else deb.debian.org),
# EDGEFARM_BASE_HOST_CA=0 to leave out this machine's own CA certificates (see below),
# EDGEFARM_TORCH (default 2.13.0): the CPU build of PyTorch looked for in docker/wheels/ (see below).
# Needs root (debootstrap), debootstrap and a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=edgefarm-base:bookworm
SUITE=bookworm
REBUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) REBUILD=1 ;;
    --tag) shift; TAG=${1:?--tag needs NAME:TAG} ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "docker/base.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
# An image reference: the one thing of the user's that reaches a command line here.
if ! [[ $TAG =~ ^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$ ]]; then
  echo "docker/base.sh: --tag '$TAG' is not an image name such as edgefarm-base:bookworm" >&2
  exit 2
fi

for tool in docker debootstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "docker/base.sh: $tool is not installed (apt-get install docker.io debootstrap)" >&2
    exit 1
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "docker/base.sh: no Docker engine answers ($(docker info 2>&1 | grep -m1 -i error || echo 'docker info failed')); start dockerd first" >&2
  exit 1
fi

# The CPU build of PyTorch for the images (EdgeFarm needs torch; PyPI's Linux build brings several
# GB of CUDA libraries). The Dockerfiles install a wheel found in docker/wheels/ before anything
# else, and otherwise take torch from their TORCH_INDEX (PyTorch's CPU index). A machine that
# reaches neither that index nor a registry but has the wheel where its pip looks (a local
# find-links folder or index) gets it copied here.
mkdir -p docker/wheels
if ! ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  PYTHON=${PYTHON:-python3}
  want="torch==${EDGEFARM_TORCH:-2.13.0}+cpu"
  if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform "manylinux_2_28_$(uname -m)" \
       --dest docker/wheels "$want" >/dev/null 2>&1 && ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
    echo "docker/base.sh: docker/wheels/$(cd docker/wheels && ls torch-*.whl | head -1): the images install this CPU build of PyTorch"
  else
    echo "docker/base.sh: no $want wheel where pip looks here: the images take PyTorch from their TORCH_INDEX"
  fi
fi

if [ "$REBUILD" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  made=$(docker image inspect -f '{{.Created}}' "$TAG")
  echo "docker/base.sh: $TAG is already there (made $made); --rebuild makes it again"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "docker/base.sh: debootstrap needs root: run it with sudo" >&2
  exit 1
fi

# The mirror apt already uses on this machine: it is the one this network reaches.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hs -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hs -E '^deb +(\[[^]]*\] +)?https?://[^ ]*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
           | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/edgefarm-base.XXXXXX)
trap 'rm -rf --one-file-system "$root"' EXIT
echo "docker/base.sh: debootstrap $SUITE from $mirror (a minute or two)"
if ! debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$mirror" >"$root.log" 2>&1; then
  tail -20 "$root.log" >&2
  echo "docker/base.sh: debootstrap failed (its log: $root.log)" >&2
  exit 1
fi
rm -f "$root.log"

# This machine's own certificate authorities (/usr/local/share/ca-certificates): where HTTPS goes
# through a proxy that inspects it, with its own CA, pip in a build on this base must trust what
# the host trusts. Public certificates, not secrets; EDGEFARM_BASE_HOST_CA=0 leaves them out.
if [ "${EDGEFARM_BASE_HOST_CA:-1}" != 0 ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1  # (its rehash warns about the bundle file)
  echo "docker/base.sh: trusting this machine's CA certificates: $(cd /usr/local/share/ca-certificates && echo ./*.crt | sed 's|\./||g')"
fi
# Small and neutral: no package lists or downloaded .debs, apt pointed at the same mirror.
echo "deb $mirror $SUITE main" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb

echo "docker/base.sh: importing it as $TAG"
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
  --message "Debian $SUITE minbase from $mirror (docker/base.sh)" - "$TAG" >/dev/null
echo "docker/base.sh: $TAG is ready ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')):" \
     "build with --build-arg BASE=$TAG, or EDGEFARM_BASE=$TAG for docker/compose.yaml"
