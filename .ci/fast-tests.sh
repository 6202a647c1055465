#!/usr/bin/env bash
# The fast tests on another interpreter: PYTHON=/path/to/python3.12 bash .ci/fast-tests.sh
# A fresh virtualenv with the project and its [test] extra; the unit tests, the producer
# on the embedded broker, and the promise's regression tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/trio-producer-fast.XXXXXX")
trap 'rm -rf "$work"' EXIT
"${PYTHON:?set PYTHON to the interpreter}" -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python --version
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e '.[test]'
python -m pytest -q -p no:cacheprovider \
    tests/unit/test_batch.py tests/unit/test_config.py tests/unit/test_worker.py \
    tests/unit/test_exit.py tests/broker/test_producer.py tests/broker/test_promise.py \
    tests/unit/test_spool.py tests/broker/test_serialization.py
