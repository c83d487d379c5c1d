"""The seed's flow end to end: ``synthd demo`` (what ``make demo`` runs) through the official SDK."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import server_env


def test_demo_runs_every_step(models_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, **server_env(tmp_path, models_dir), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "synthd.cli", "demo"], capture_output=True, check=False, text=True, env=env, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("synthd demo summary") :]
    for step in (
        "warmup",
        "gpu_preference auto",
        "H100:8",
        "streamed chat",
        "8 concurrent chats",
        "SFT job",
        "DPO job",
        "SFT model vs base",
        "DPO model vs base",
    ):
        assert step in summary
    assert summary.count("pass") == 9 and "FAIL" not in summary
    assert "refused with 409" in summary
    assert "The capital of Zorbania is Quillport" in result.stdout
