#!/usr/bin/env bash
# Set up this checkout: the Python package (editable) and, where possible, the data.
#   scripts/setup.sh          what `make train` needs
#   scripts/setup.sh --test   also the test dependencies (SLURM, MariaDB, munge; pytest, emulators)
# Debian packages are installed when this runs as root with apt-get; otherwise the
# Fashion-MNIST files come from Keras's download at the first run (or --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
test_deps=0
[ "${1:-}" = --test ] && test_deps=1

debs=(dataset-fashion-mnist)
[ $test_deps = 1 ] && debs+=(slurm-wlm slurm-client slurmdbd munge mariadb-server)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    missing=()
    for deb in "${debs[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[setup] apt-get install ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
elif [ $test_deps = 1 ]; then
    echo "[setup] not root or no apt-get: install ${debs[*]} yourself for the SLURM tests (they are skipped otherwise)"
else
    echo "[setup] not root or no apt-get: Fashion-MNIST will be downloaded by Keras at the first run"
fi

extras=examples
[ $test_deps = 1 ] && extras=dev
echo "[setup] pip install -e .[$extras]"
"$PYTHON" -m pip install -q -e ".[$extras]"
