"""Style L2: importing core pulls in no web framework, HTTP client, Redis client or torch."""

import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_core_imports_no_services_or_torch() -> None:
    code = (
        "import sys, core, core.cli, core.blocks, core.store; "
        "print(sorted({'fastapi', 'httpx', 'redis', 'torch', 'starlette', 'uvicorn'} "
        "& set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout
    assert out.strip() == "[]"
