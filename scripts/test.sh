#!/usr/bin/env bash
# Run the whole test suite, OpenSearch integration tests included: starts the local OpenSearch
# (scripts/opensearch-local.sh) unless OPENSEARCH_URL points at a running cluster, and the secured drill node
# (start --secure: TLS, basic auth, tiny write queue; tests/test_security.py, tests/test_rejections.py) unless
# OPENSEARCH_SECURE_URL points at one; stops afterwards what this script started. Then the integration tests again
# against OpenSearch 3.x (GENQ_OPENSEARCH_3_VERSION, default 3.6.0; empty skips them): a node started the same way
# (its own install and port, 9202) unless OPENSEARCH_3_URL points at one; the secured drills run on 2.x only.
# A side virtualenv for sentence-transformers' backend="onnx" loader (scripts/st-onnx-env.sh) unless
# GENQ_ST_ONNX_PYTHON is set. Extra arguments go to pytest (both runs).
set -uo pipefail
cd "$(dirname "$0")/.."
started=()  # the opensearch-local.sh option of each node this script started ("" = the plain node)
stop_started() {
  local node
  for node in "${started[@]}"; do scripts/opensearch-local.sh stop $node >/dev/null 2>&1 || true; done  # "" -> no option
}
trap 'stop_started; exit 130' INT TERM  # interrupted: leave no node behind
start_node() {  # start_node [--secure]: start it unless it is running; remember to stop it
  if ! scripts/opensearch-local.sh status "$@" >/dev/null 2>&1; then
    scripts/opensearch-local.sh start "$@" >/dev/null || { echo "could not start the local OpenSearch $*" >&2; stop_started; exit 1; }
    started+=("${1:-}")
  fi
}
if [[ -z ${OPENSEARCH_URL:-} ]]; then
  start_node
  eval "$(scripts/opensearch-local.sh env)"  # OPENSEARCH_URL
fi
if [[ -z ${OPENSEARCH_SECURE_URL:-} ]]; then
  start_node --secure
  eval "$(scripts/opensearch-local.sh env --secure)"  # OPENSEARCH_SECURE_URL, _CA, _USERNAME, _PASSWORD
fi
if [[ -z ${GENQ_ST_ONNX_PYTHON:-} ]]; then  # sentence-transformers' backend="onnx" loader, in a side venv (see the script)
  if GENQ_ST_ONNX_PYTHON=$(scripts/st-onnx-env.sh python); then export GENQ_ST_ONNX_PYTHON
  else echo "scripts/st-onnx-env.sh failed: the sentence-transformers ONNX-backend test will be skipped" >&2; unset GENQ_ST_ONNX_PYTHON; fi
fi
python -m pytest "$@"
rc=$?
stop_started
if [[ -n ${GENQ_OPENSEARCH_3_VERSION-3.6.0} ]]; then
  export GENQ_OPENSEARCH_VERSION=${GENQ_OPENSEARCH_3_VERSION-3.6.0}
  began=$SECONDS
  started=()
  if [[ -n ${OPENSEARCH_3_URL:-} ]]; then
    export OPENSEARCH_URL=$OPENSEARCH_3_URL
  else
    start_node
    eval "$(scripts/opensearch-local.sh env)"  # OPENSEARCH_URL
  fi
  unset OPENSEARCH_SECURE_URL
  echo "== integration tests against OpenSearch $GENQ_OPENSEARCH_VERSION at $OPENSEARCH_URL (up in $((SECONDS - began)) s) =="
  python -m pytest -m integration "$@"
  rc3=$?
  if [[ $rc3 == 5 ]]; then rc3=0; fi  # pytest's "no tests collected": none of the selected tests is an integration test
  stop_started
  if [[ $rc == 0 ]]; then rc=$rc3; fi
fi
exit $rc
