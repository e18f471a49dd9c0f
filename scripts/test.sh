#!/usr/bin/env bash
# Run the whole test suite, the integration tests on every engine included: starts the local OpenSearch
# (scripts/opensearch-local.sh) unless OPENSEARCH_URL points at a running cluster, the local Elasticsearch
# (scripts/elasticsearch-local.sh, 8.x) unless ELASTICSEARCH_URL points at one, and the secured drill nodes of both
# engines (start --secure: TLS, basic auth, tiny write queue; tests/test_security.py, tests/test_rejections.py) unless
# OPENSEARCH_SECURE_URL / ELASTICSEARCH_SECURE_URL point at them; stops afterwards what this script started. Then the integration tests again
# against OpenSearch 3.x (GENQ_OPENSEARCH_3_VERSION, default 3.6.0) and Elasticsearch 9.x (GENQ_ELASTICSEARCH_9_VERSION,
# default 9.2.0; empty skips each): nodes started the same way (their own installs and ports) unless OPENSEARCH_3_URL /
# ELASTICSEARCH_9_URL point at running ones; the secured drills run on OpenSearch 2.19 and Elasticsearch 8.19. The contract tests take the
# `cfg` fixture, parametrised over the engines whose URL is set: the same test runs on all four servers.
# A side virtualenv for sentence-transformers' backend="onnx" loader (scripts/st-onnx-env.sh) unless
# GENQ_ST_ONNX_PYTHON is set. Extra arguments go to pytest (both runs).
set -uo pipefail
cd "$(dirname "$0")/.."
started=()  # "<script> <option or -> <version variable=value or ->" of each node this script started
stop_started() {
  local node script option setting
  for node in "${started[@]}"; do
    read -r script option setting <<<"$node"
    [[ $option == - ]] && option=""
    [[ $setting == - ]] && setting=""
    env ${setting:+"$setting"} "scripts/$script-local.sh" stop ${option:+"$option"} >/dev/null 2>&1 || true
  done
}
trap 'stop_started; exit 130' INT TERM  # interrupted: leave no node behind
start_node() {  # start_node opensearch|elasticsearch [--secure]: start it unless it is running; remember to stop it
  local script=$1 option=${2:-} setting
  setting=$( [[ $script == opensearch ]] && echo "GENQ_OPENSEARCH_VERSION=${GENQ_OPENSEARCH_VERSION:-}" \
             || echo "GENQ_ELASTICSEARCH_VERSION=${GENQ_ELASTICSEARCH_VERSION:-}")
  [[ $setting == *= ]] && setting=""
  if ! "scripts/$script-local.sh" status ${option:+"$option"} >/dev/null 2>&1; then
    "scripts/$script-local.sh" start ${option:+"$option"} >/dev/null \
      || { echo "could not start the local $script $option" >&2; stop_started; exit 1; }
    started+=("$script ${option:--} ${setting:--}")
  fi
  eval "$("scripts/$script-local.sh" env ${option:+"$option"})"
}
[[ -n ${OPENSEARCH_URL:-} ]] || start_node opensearch  # exports OPENSEARCH_URL
[[ -n ${ELASTICSEARCH_URL:-} ]] || start_node elasticsearch  # exports ELASTICSEARCH_URL
[[ -n ${OPENSEARCH_SECURE_URL:-} ]] || start_node opensearch --secure  # OPENSEARCH_SECURE_URL, _CA, _USERNAME, _PASSWORD
[[ -n ${ELASTICSEARCH_SECURE_URL:-} ]] || start_node elasticsearch --secure  # ELASTICSEARCH_SECURE_URL, _CA, ...
if [[ -z ${GENQ_ST_ONNX_PYTHON:-} ]]; then  # sentence-transformers' backend="onnx" loader, in a side venv (see the script)
  if GENQ_ST_ONNX_PYTHON=$(scripts/st-onnx-env.sh python); then export GENQ_ST_ONNX_PYTHON
  else echo "scripts/st-onnx-env.sh failed: the sentence-transformers ONNX-backend test will be skipped" >&2; unset GENQ_ST_ONNX_PYTHON; fi
fi
python -m pytest "$@"
rc=$?
stop_started
if [[ -n ${GENQ_OPENSEARCH_3_VERSION-3.6.0}${GENQ_ELASTICSEARCH_9_VERSION-9.2.0} ]]; then
  began=$SECONDS
  started=()
  unset OPENSEARCH_URL ELASTICSEARCH_URL OPENSEARCH_SECURE_URL ELASTICSEARCH_SECURE_URL
  if [[ -n ${GENQ_OPENSEARCH_3_VERSION-3.6.0} ]]; then
    export GENQ_OPENSEARCH_VERSION=${GENQ_OPENSEARCH_3_VERSION-3.6.0}
    if [[ -n ${OPENSEARCH_3_URL:-} ]]; then export OPENSEARCH_URL=$OPENSEARCH_3_URL; else start_node opensearch; fi
  fi
  if [[ -n ${GENQ_ELASTICSEARCH_9_VERSION-9.2.0} ]]; then
    export GENQ_ELASTICSEARCH_VERSION=${GENQ_ELASTICSEARCH_9_VERSION-9.2.0}
    if [[ -n ${ELASTICSEARCH_9_URL:-} ]]; then export ELASTICSEARCH_URL=$ELASTICSEARCH_9_URL; else start_node elasticsearch; fi
  fi
  echo "== integration tests against OpenSearch ${GENQ_OPENSEARCH_VERSION:-(none)} at ${OPENSEARCH_URL:-} and" \
       "Elasticsearch ${GENQ_ELASTICSEARCH_VERSION:-(none)} at ${ELASTICSEARCH_URL:-} (up in $((SECONDS - began)) s) =="
  python -m pytest -m integration "$@"
  rc3=$?
  if [[ $rc3 == 5 ]]; then rc3=0; fi  # pytest's "no tests collected": none of the selected tests is an integration test
  stop_started
  if [[ $rc == 0 ]]; then rc=$rc3; fi
fi
exit $rc
