#!/usr/bin/env bash
# The cluster scenarios (tests/broker/test_cluster.py) on a replicated Apache Kafka 4.1 cluster:
# one KRaft controller and three brokers, each its own JVM (Java 17; jars from Maven
# Central via tests/harness/apache-kafka/pom.xml, cached in ~/.cache/trio-producer). About 4
# minutes on 2 cores. Usage: bash .ci/cluster.sh [extra pytest args] -- from anywhere,
# with the project installed in the active Python environment. The figures of the run
# are printed at the end and written as JSON to $TRIO_PRODUCER_CLUSTER_REPORT
# (default: cluster-report.json in a temporary folder).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

java -version 2>&1 | head -1
export TRIO_PRODUCER_CLUSTER_REPORT="${TRIO_PRODUCER_CLUSTER_REPORT:-${TMPDIR:-/tmp}/cluster-report.json}"
start=$(date +%s)
# -rxX: a scenario that shows a known finding is an xfail; say which and why.
python -m pytest -m cluster tests/broker/test_cluster.py -p no:cacheprovider -q -rxX "$@"
echo "cluster scenarios: $(( $(date +%s) - start )) s; figures in $TRIO_PRODUCER_CLUSTER_REPORT"
