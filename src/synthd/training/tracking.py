"""Experiment tracking for a job: TensorBoard scalars always, Weights & Biases when asked.

Every job writes TensorBoard event files to ``training/<job>/tensorboard`` (transformers'
``TensorBoardCallback``: ``train/loss``, ``train/learning_rate``, ``eval/loss``, ...); open them with
``tensorboard --logdir $SYNTHD_HOME/training``. A job created with OpenAI's
``integrations: [{"type": "wandb", "wandb": {"project": ..., "name", "entity", "tags"}}]`` also logs
to W&B (transformers' ``WandbCallback``), offline unless the server's environment says
``WANDB_MODE=online`` (and holds ``WANDB_API_KEY``): the run folder is
``training/<job>/wandb/offline-run-*``, uploadable later with ``wandb sync``.
"""

import os

from synthd.training.layout import JobLayout


def wandb_settings(integrations: list[dict] | None) -> dict | None:
    """The ``wandb`` block of a job's integrations, or None."""
    return next((i["wandb"] for i in integrations or () if i.get("type") == "wandb"), None)


def report_to(integrations: list[dict] | None) -> list[str]:
    """transformers' ``report_to`` for a job."""
    return ["tensorboard", "wandb"] if wandb_settings(integrations) else ["tensorboard"]


def tracking_env(layout: JobLayout, integrations: list[dict] | None) -> dict[str, str]:
    """Environment for the job's worker: where TensorBoard and W&B write, and the W&B run's names."""
    env = {"TENSORBOARD_LOGGING_DIR": str(layout.tensorboard)}
    wandb = wandb_settings(integrations)
    if wandb:
        env.update(
            {
                "WANDB_DIR": str(layout.folder),
                "WANDB_PROJECT": wandb["project"],
                "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
                "WANDB_SILENT": "true",
                "WANDB_NAME": wandb.get("name") or layout.job_id,
                "WANDB_RUN_ID": layout.job_id,
            }
        )
        if wandb.get("entity"):
            env["WANDB_ENTITY"] = wandb["entity"]
        if wandb.get("tags"):
            env["WANDB_TAGS"] = ",".join(wandb["tags"])
    return env
