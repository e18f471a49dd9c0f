"""Auth/TLS and rejected-write drills, for `bench/reliability.py`: runs `tests/test_security.py` and
`tests/test_rejections.py` against the secured drill node (`scripts/opensearch-local.sh start --secure`) and reads
pytest's junit XML: cases passed / failed / skipped and the rejected writes each drill retried.

    from security_drills import run_security_drills
    run_security_drills(Path("/tmp/drills.xml"))
    # {"cases": 10, "passed": 10, "failed": 0, "skipped": 0, "failures": [],
    #  "rejections_retried": {"index": 149, "reindex": 20}}

Standard library only.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["tests/test_security.py", "tests/test_rejections.py"]


def secure_env() -> dict[str, str]:
    """OPENSEARCH_SECURE_URL, _CA, _USERNAME, _PASSWORD of the drill node (from the environment, else from the script)."""
    if os.environ.get("OPENSEARCH_SECURE_URL"):
        return {}
    out = subprocess.run([str(ROOT / "scripts" / "opensearch-local.sh"), "env", "--secure"], capture_output=True,
                         text=True, check=True).stdout
    return dict(token.split("=", 1) for token in shlex.split(out) if "=" in token)


def read_junit(path: Path) -> dict[str, Any]:
    """Counts of a pytest junit XML file and its ``rejections_retried.<drill>`` test-suite properties."""
    root = ET.parse(path).getroot()
    cases = root.findall(".//testcase")
    failures = [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = sum(c.find("skipped") is not None for c in cases)
    rejections = {p.get("name", "").removeprefix("rejections_retried."): int(p.get("value", 0))
                  for p in root.iter("property") if p.get("name", "").startswith("rejections_retried.")}
    return {"cases": len(cases), "passed": len(cases) - len(failures) - skipped, "failed": len(failures),
            "skipped": skipped, "failures": failures, "rejections_retried": rejections}


def run_security_drills(junit_xml: Path, extra_args: list[str] | None = None) -> dict[str, Any]:
    """Run both drill modules with this interpreter (the drill node must be running) and summarise them."""
    env = {**os.environ, **secure_env()}
    subprocess.run([sys.executable, "-m", "pytest", "-q", *MODULES, f"--junitxml={junit_xml}", *(extra_args or [])],
                   cwd=ROOT, env=env, check=False)
    return read_junit(junit_xml)
