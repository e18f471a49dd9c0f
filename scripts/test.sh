#!/usr/bin/env bash
# Run the whole test suite, OpenSearch integration tests included: starts the local OpenSearch
# (scripts/opensearch-local.sh) unless OPENSEARCH_URL points at a running cluster, and stops it afterwards
# if this script started it. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
started=0
if [[ -z ${OPENSEARCH_URL:-} ]]; then
  if ! scripts/opensearch-local.sh status >/dev/null 2>&1; then
    scripts/opensearch-local.sh start >/dev/null || { echo "could not start the local OpenSearch" >&2; exit 1; }
    started=1
  fi
  export OPENSEARCH_URL=http://127.0.0.1:${GENQ_OPENSEARCH_PORT:-9200}
fi
python -m pytest "$@"
rc=$?
if [[ $started == 1 ]]; then scripts/opensearch-local.sh stop >/dev/null 2>&1 || true; fi
exit $rc
