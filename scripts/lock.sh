#!/usr/bin/env bash
# Make requirements.lock from requirements.txt: every package the classroom's set
# pulls in, pinned, with the sha256 of each of its files on PyPI (pip-compile
# --generate-hashes), so that `pip install --require-hashes -r requirements.lock`
# (scripts/setup.sh) installs the same files on every machine, or nothing.
#   scripts/lock.sh    after any change to requirements.txt; commit both files
# pip-tools runs from a venv of its own in a temporary directory; the index is PyPI
# alone (PIP_CONFIG_FILE=/dev/null: no local index or wheel folder a host may
# configure, whose files would give hashes PyPI does not have).
# pip-compile picks the newest releases the Python it runs on can install: it runs on
# the oldest Python a class has, Debian 12's 3.11.2 (/usr/bin/python3 there; some
# releases need 3.11.5, soupsieve 3.0.2 and later, and a lock made on a newer 3.11
# fails on Debian 12). One lock serves Python 3.11 (Debian 12) and 3.13 (Debian 13):
# every pinned release has a wheel for both (x86_64 and aarch64), and the set's
# Python-version markers only drop packages on newer Pythons (typing_extensions,
# overrides), which the lock then installs unused: none adds one (tests/test_scripts.py
# checks both Pythons against PyPI).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${LABKIT_PYTHON:-/usr/bin/python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "lock: needs Python 3.11 (Debian 12's, the oldest a class runs); $("$python" --version 2>&1) found: set LABKIT_PYTHON" >&2
    exit 1
fi
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
# The end-to-end test's package (Playwright), installed into the same venv by `./lab vm e2e`:
# locked too, within the classroom's lock (a package both need gets the classroom's version).
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/venv/bin/pip-compile" -q --generate-hashes \
    --strip-extras --no-emit-index-url --index-url https://pypi.org/simple \
    --constraint requirements.lock -o e2e/requirements.lock e2e/requirements.txt
echo "lock: e2e/requirements.lock made from e2e/requirements.txt ($(grep -c '^[A-Za-z0-9].*==' e2e/requirements.lock) packages)"
