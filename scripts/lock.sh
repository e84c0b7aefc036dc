#!/usr/bin/env bash
# Make requirements.lock from requirements.txt: every package the classroom's set
# pulls in, pinned, with the sha256 of each of its files on PyPI (pip-compile
# --generate-hashes), so that `pip install --require-hashes -r requirements.lock`
# (scripts/setup.sh) installs the same files on every machine, or nothing.
#   scripts/lock.sh    after any change to requirements.txt; commit both files
# pip-tools runs from a venv of its own in a temporary directory; the index is PyPI
# alone (PIP_CONFIG_FILE=/dev/null: no local index or wheel folder a host may
# configure, whose files would give hashes PyPI does not have).
# One lock serves Python 3.11 (Debian 12) and 3.13 (Debian 13): every pinned release
# has a wheel for both, and nothing in the set depends on the Python version
# (tests/test_scripts.py checks both against PyPI).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${LABKIT_PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
"$python" -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q pip-tools==7.6.2
cd "$repo"
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/venv/bin/pip-compile" -q --generate-hashes \
    --strip-extras --no-emit-index-url --index-url https://pypi.org/simple \
    -o requirements.lock requirements.txt
echo "lock: requirements.lock made from requirements.txt ($(grep -c '^[A-Za-z0-9].*==' requirements.lock) packages)"
