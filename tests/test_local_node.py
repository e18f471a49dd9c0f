"""scripts/opensearch-local.sh: the node's liveness comes from the process table, not from a pid file alone."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "opensearch-local.sh"


def _local(cmd: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENQ_OPENSEARCH_HOME": str(home), "GENQ_OPENSEARCH_VERSION": "2.19.1"}
    return subprocess.run(["bash", str(SCRIPT), cmd], check=False, env=env, capture_output=True, text=True, timeout=60)


def test_stale_pid_file_is_not_a_running_node(tmp_path):
    """A node killed by SIGKILL or a machine restart leaves its pid file; the pid may since belong to another process
    (here: this test's). status must say stopped (start then launches a node instead of failing at once), and stop
    must clear the file without killing that process."""
    pid_file = tmp_path / "opensearch-2.19.1" / "pid"
    pid_file.parent.mkdir()
    pid_file.write_text(f"{os.getpid()}\n")
    status = _local("status", tmp_path)
    assert status.returncode == 1 and status.stdout.strip() == "stopped"
    stop = _local("stop", tmp_path)
    assert stop.returncode == 0 and "not running" in stop.stderr
    assert not pid_file.exists()
