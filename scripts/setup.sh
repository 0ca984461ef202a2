#!/usr/bin/env bash
# Set up everything EdgeFarm needs on a fresh Debian machine, idempotently:
# Debian packages (font for rendered data, browser for the dashboard test, PostgreSQL),
# a virtual environment with EdgeFarm and its Python packages, and the bundled models.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}

# The first of these interpreters that really runs (a pyenv shim may not).
first_python() {
  for candidate in "$@"; do
    if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then echo "$candidate"; return; fi
  done
}
# The controller runs on Python 3.10 where there is one: the local board runs the agent in the
# controller's interpreter, and Paddle Lite publishes wheels for Python 3.8 and 3.10 only.
# Elsewhere any Python 3.10+ works, and the local board reports Paddle Lite as not installed.
PYTHON=${PYTHON:-$(first_python "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 "$(command -v python3.10 || true)" python3)}
# fonts-dejavu-core: the font text is rendered with for labelled OCR data.
# chromium: the real browser the dashboard test drives. postgresql: the team database test.
# openssh-server, iproute2: SSH test boards, each a real sshd in its own network namespace.
# nftables: random packet loss on a test board's link where the kernel has no tc netem.
# adb: the real adb server the ADB transport talks to.
DEBS=(fonts-dejavu-core chromium postgresql openssh-server iproute2 nftables adb)

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

want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$want" ]; then
  echo "setup: $VENV is not Python $want; creating it again"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.edgefarm-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages (a few minutes the first time)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]"
  # The PaddleOCR models ship as ONNX files inside this package; its own dependencies
  # (OpenCV and friends) are not needed, only the files.
  "$VENV/bin/pip" install -q --no-deps "rapidocr-onnxruntime==1.4.4"
  touch "$stamp"
fi

# A second interpreter for the test boards, with only what a board needs, so the agent is
# proven on a board whose Python is not the controller's. BOARD_PYTHON overrides.
BOARD_VENV=${BOARD_VENV:-.venv-board}
BOARD_PYTHON=${BOARD_PYTHON:-$(first_python "$HOME"/.pyenv/versions/3.11.*/bin/python3.11 "$(command -v python3.11 || true)" python3)}
if [ -x "$BOARD_VENV/bin/python" ] && [ "$("$BOARD_VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$want" ]; then
  rm -rf "$BOARD_VENV"  # made when the controller ran another Python: the two must differ
fi
if [ ! -x "$BOARD_VENV/bin/python" ]; then
  echo "setup: creating $BOARD_VENV with $BOARD_PYTHON"
  "$BOARD_PYTHON" -m venv "$BOARD_VENV"
  "$BOARD_VENV/bin/pip" install -q --upgrade pip
  "$BOARD_VENV/bin/pip" install -q numpy onnxruntime
fi
echo "setup: ready ($("$VENV/bin/python" --version), $VENV; test boards: $("$BOARD_VENV/bin/python" --version), $BOARD_VENV)"
