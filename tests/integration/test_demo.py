"""The seed's flow end to end: ``synthd demo`` (what ``make demo`` runs) through the official SDK,
without training again what the session trains once (``sft_facts_job``, ``dpo_style_job``)."""

import io
from pathlib import Path

import openai
import pytest
from rich.console import Console

from synthd.cli import demo as demo_cli
from synthd.config import get_settings
from tests.support.cli import synthd
from tests.support.jobs import ExampleJob, wait_for
from tests.support.server import MODEL, server_env


@pytest.mark.timeout(1800)  # the session's two example jobs, when no test trained them before
def test_demo_runs_every_step(
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ft_client: openai.OpenAI,
    sft_facts_job: ExampleJob,
    dpo_style_job: ExampleJob,
) -> None:
    """``run_demo`` as ``synthd demo`` runs it, on a fresh home where the session's adapters for the
    demo's two data files are imported first: its job steps take those (checking the demo asks for
    the very data and hyperparameters they were trained with) and every other step runs as is."""
    env = server_env(tmp_path, models_dir)
    trained = {"supervised": sft_facts_job, "dpo": dpo_style_job}
    for kind, job in trained.items():
        assert wait_for(ft_client, job.created.id, timeout_s=1500).status == "succeeded"
        imported = synthd("models", "import", str(job.adapter_dir), "--base", MODEL, "--name", f"demo-{kind}", env=env)
        assert imported.returncode == 0, imported.stderr

    def reuse(self: demo_cli.Demo, kind: str, data_file: str, hyperparameters: dict) -> tuple[bool, str]:
        assert (data_file, hyperparameters) == (trained[kind].data_file, trained[kind].hyperparameters)
        self.fine_tunes[kind] = f"ft:{MODEL}:demo-{kind}"
        return True, f"{self.fine_tunes[kind]} (trained once by the session as {trained[kind].created.id})"

    monkeypatch.setattr(demo_cli.Demo, "fine_tune", reuse)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    out = io.StringIO()
    try:
        demo_cli.run_demo(Console(file=out, width=200, color_system=None))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    printed = out.getvalue()
    summary = printed[printed.index("synthd demo summary") :]
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
    assert "The capital of Zorbania is Quillport" in printed  # the SFT model's answer, served by the demo
