#!/usr/bin/env bash
# Build the sdist, unpack it in a temporary directory, install the package from it into a
# fresh virtualenv and run the unit tests that need no broker from the unpacked tree: the
# sdist must be complete enough to test itself. Usage: bash .ci/sdist.sh (from anywhere;
# PYTHON=python3.12 to choose the interpreter). Keeps nothing but prints the sdist's name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/trio-producer-sdist.XXXXXX")
trap 'rm -rf "$work"' EXIT

"${PYTHON:-python3}" -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip build

# -W error: setuptools' deprecation warnings (licence table, classifiers) fail the build.
PYTHONWARNINGS=error::DeprecationWarning python -m build --sdist --outdir "$work/dist" "$root" \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
if grep -iE 'SetuptoolsDeprecationWarning|deprecated' "$work/build.log"; then
    echo "sdist.sh: the build printed deprecation warnings (above)" >&2
    exit 1
fi
sdist=$(echo "$work"/dist/*.tar.gz)
echo "built $(basename "$sdist")"

mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"
tree=$(echo "$work"/src/*/)

# What the sdist must carry (the test suite, its helpers and data, the docs, the changelog).
missing=0
for f in LICENSE CHANGELOG.md README.md pyproject.toml MANIFEST.in \
    tests/conftest.py tests/harness/faultproxy.py tests/harness/apache_kafka.py \
    tests/harness/apache-kafka/pom.xml tests/harness/apps/produce_until_signal.py \
    tests/unit/test_batch.py docs/conf.py docs/index.rst docs/examples/test_example.py \
    benchmarks/__main__.py trio_producer/py.typed; do
    [ -e "$tree/$f" ] || { echo "sdist.sh: $f is missing from the sdist" >&2; missing=1; }
done
[ "$missing" = 0 ]

# Install from the sdist itself, not editable, and remove the unpacked package sources so
# that the tests can only import the installed package. Then run the tests from the tree.
python -m pip install --quiet "$sdist[test]"
rm -rf "$tree/trio_producer"
cd "$tree"
python - <<'PY'
import pathlib

import trio_producer

where = pathlib.Path(trio_producer.__file__).resolve().parent
assert "site-packages" in where.parts, f"the tests would import {where}"
print("testing the installed", where)
PY
python -m pytest -q -p no:cacheprovider \
    tests/unit/test_batch.py tests/unit/test_config.py tests/unit/test_worker.py \
    tests/unit/test_exit.py
