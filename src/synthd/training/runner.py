"""Runs one fine-tuning job: TRL ``SFTTrainer`` / ``DPOTrainer`` with a PEFT LoRA adapter.

Called in a worker process (``python -m synthd.training.worker JOB_ID``) so the API server never
shares memory or a crash with training. Progress goes to the database: an event at every logging
step, one at every evaluation (``valid_loss`` at the step it was computed), a checkpoint record at
every save, the cancel flag read at every step. A job that finds checkpoints from an earlier
attempt resumes from the newest one.
"""

import logging
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from synthd.models.resolve import resolve_model
from synthd.store.repository import Repository, now
from synthd.training.config import Hyperparameters, LoRASettings
from synthd.training.data import load_jsonl

log = logging.getLogger(__name__)
MAX_LENGTH = 1024


class JobCallback(TrainerCallback):
    """Writes events and checkpoints of ``job_id`` and stops training when a cancel is requested."""

    def __init__(self, repo: Repository, job_id: str) -> None:
        self.repo = repo
        self.job_id = job_id
        self.cancelled = False
        self.last: dict[str, float] = {}
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        job = self.repo.get_job(self.job_id)
        if job is not None and job.cancel_requested:
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.last["valid_loss"] = float(logs["eval_loss"])
            self.repo.add_event(self.job_id, f"Step {state.global_step}: validation loss={logs['eval_loss']:.4f}",
                                {"step": state.global_step, "valid_loss": self.last["valid_loss"]})
        if "loss" not in logs:
            return
        self.last["train_loss"] = float(logs["loss"])
        if "mean_token_accuracy" in logs:
            self.last["mean_token_accuracy"] = float(logs["mean_token_accuracy"])
        data = {"step": state.global_step, "total_steps": state.max_steps, "train_loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)), "epoch": float(logs.get("epoch", 0.0))}
        for key in ("mean_token_accuracy", "rewards/margins", "rewards/accuracies"):
            if key in logs:
                data[key.replace("/", "_")] = float(logs[key])
        elapsed = time.monotonic() - self.started
        remaining = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
        self.repo.update_job(self.job_id, f"Step {state.global_step}/{state.max_steps}: training loss={logs['loss']:.4f}",
                             data, estimated_finish=now() + int(remaining))

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        metrics = {"step": state.global_step, "train_loss": self.last.get("train_loss"),
                   "valid_loss": self.last.get("valid_loss"), "mean_token_accuracy": self.last.get("mean_token_accuracy")}
        self.repo.add_checkpoint(self.job_id, state.global_step, metrics, str(path))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-N`` folder with the highest N that has trainer state, or None."""
    found = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def run_job(repo: Repository, job_id: str, models_dir: Path, adapters_dir: Path, work_dir: Path) -> str:
    """Train ``job_id`` to its end; return its final status (``succeeded`` or ``cancelled``).

    Raises:
        Exception: anything training raises; the worker records it as the job's error.
    """
    from datasets import Dataset
    from peft import LoraConfig

    job = repo.get_job(job_id)
    assert job is not None, job_id
    method = job.method["type"]
    output_dir = work_dir / job_id
    resume = latest_checkpoint(output_dir)
    repo.update_job(job_id, f"Resuming from {resume.name}" if resume else "Fine-tuning job started",
                    status="running", started_at=job.started_at or now(), attempts=job.attempts + 1)
    train = load_jsonl(repo.read_file(repo.get_file(job.training_file)), method)
    valid = load_jsonl(repo.read_file(repo.get_file(job.validation_file)), method) if job.validation_file else None
    hyper = Hyperparameters.resolve(job.method.get(method, {}).get("hyperparameters", {}), method, len(train.rows))
    lora = LoRASettings(**{**job.lora, "target_modules": tuple(job.lora["target_modules"])})
    source = resolve_model(job.model, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    steps_per_epoch = math.ceil(len(train.rows) / hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    common = dict(
        output_dir=str(output_dir), num_train_epochs=hyper.n_epochs, per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.batch_size, learning_rate=hyper.learning_rate, logging_steps=1,
        save_strategy="steps", save_steps=max(1, total_steps // 4), report_to=[], seed=job.seed,
        data_seed=job.seed, use_cpu=not torch.cuda.is_available(), max_length=MAX_LENGTH, disable_tqdm=True,
        eval_strategy="steps" if valid else "no", eval_steps=max(1, total_steps // 4),
        include_num_input_tokens_seen="all", lr_scheduler_type="linear", warmup_steps=0,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    callback = JobCallback(repo, job_id)
    datasets = {"train_dataset": Dataset.from_list(train.rows),
                "eval_dataset": Dataset.from_list(valid.rows) if valid else None}
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(beta=hyper.beta, **common), processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[callback], **datasets)
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common), processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[callback], **datasets)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if callback.cancelled:
        repo.update_job(job_id, "Fine-tuning job cancelled", status="cancelled", finished_at=now())
        return "cancelled"
    adapter_dir = adapters_dir / job_id
    staging = adapters_dir / f".{job_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    fine_tuned = f"ft:{job.model}:{job.suffix or ''}:{job_id}"
    repo.add_model(fine_tuned, job.model, str(adapter_dir), job_id)
    trained_tokens = int(trainer.state.num_input_tokens_seen or 0)
    repo.update_job(job_id, "The job has successfully completed", status="succeeded", fine_tuned_model=fine_tuned,
                    trained_tokens=trained_tokens, finished_at=now(), estimated_finish=None,
                    method={**job.method, method: {"hyperparameters": hyper.to_dict()}})
    shutil.rmtree(output_dir, ignore_errors=True)
    return "succeeded"
