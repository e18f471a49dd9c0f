#!/usr/bin/env bash
# A side virtualenv with the sentence-transformers release whose backend="onnx" loader runs today (ST 5.x +
# optimum-onnx 0.1, which needs transformers < 4.58; the project itself runs transformers 5), for the test that the
# exported sentence-transformers folder loads there (tests/test_cluster_model.py). PyTorch and the other heavy
# packages come from the project's virtualenv through a .pth file (appended to sys.path, so this venv's own
# transformers/sentence-transformers win); only the older libraries are installed here. Prints its python.
#   scripts/st-onnx-env.sh [PROJECT_PYTHON]     (default: the python on PATH)
set -euo pipefail
project_python=${1:-python}
venv=${GENQ_ST_ONNX_VENV:-$HOME/.cache/genq-search/st-onnx-venv}
stamp=$venv/.installed-v2
if [[ ! -f $stamp ]]; then
  rm -rf "$venv"
  "$project_python" -m venv "$venv" >&2
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/genq-project.pth"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q \
    "sentence-transformers>=5.1,<6" "transformers>=4.41,<4.58" "optimum-onnx==0.1.*" "datasets<5" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
