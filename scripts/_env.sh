# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Creates .venv with Python 3.11 if missing and installs the project into it.
# pip (not uv/poetry) is used on purpose: it takes torch 2.14.1 from this machine's disk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

# Debian packages Qt needs to run (offscreen or under Xvfb), and xvfb for real-window screenshots.
DEB_PACKAGES="libegl1 libgl1 libopengl0 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 \
libglib2.0-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxrender1 libxi6 fonts-dejavu-core xvfb xauth"

# What the test suite itself runs (real components, never mocked): dciodvfy validates every
# DICOM object we write, pdftotext/pdftoppm read back the PDF reports, Orthanc (+ its DICOMweb
# plugin) and DCMTK are the PACS peers (openssl makes the DICOM TLS test certificates; util-linux's
# unshare mounts the small tmpfs of the full-disk test), tesseract reads burned-in text.
TEST_DEB_PACKAGES="dicom3tools poppler-utils orthanc orthanc-dicomweb dcmtk tesseract-ocr tesseract-ocr-eng openssl util-linux"

install_debs() {
  local wanted="$DEB_PACKAGES ${1:-}"
  if [ "$(id -u)" != "0" ]; then
    echo "[setup] not root: skipping Debian packages ($wanted)" >&2
    return 0
  fi
  local missing=""
  for p in $wanted; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

ensure_venv() {
  local extras="${1:-}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed${extras:+-$extras}"
  # Re-install only when pyproject.toml changed since the last install.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing imaging-assist${extras:+[$extras]} into .venv (first run takes a few minutes)"
    # This machine's local package mirrors print one "is ignored" line per package: drop those.
    "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    touch "$stamp"
  fi
}
