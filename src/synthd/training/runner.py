"""Runs one fine-tuning job: TRL ``SFTTrainer`` / ``DPOTrainer`` with a PEFT LoRA adapter.

Called in a worker process (``python -m synthd.training.worker JOB_ID``) so the API server never
shares memory or a crash with training. The worker never writes the job's status: it reports
through events (metrics batched, flushed every ``EVENT_FLUSH_S`` and at every checkpoint), checkpoint
records, and how it ends (``RunOutcome``, written to ``result.json`` by the worker). At every step it
reads the job's cancel and pause flags: cancel stops at once, pause saves a checkpoint and stops.
A job that finds checkpoints from an earlier attempt (restart, pause) resumes from the newest one.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from synthd.engine.prompts import CHAT_TEMPLATE_FILE, DEFAULT_CHAT_TEMPLATE
from synthd.store.files import copy_tree_atomic
from synthd.store.repository import Repository
from synthd.training.config import DEFAULT_N_EVALS, Hyperparameters, LoRASettings, save_steps
from synthd.training.data import load_jsonl
from synthd.training.layout import JobLayout, latest_checkpoint
from synthd.training.tracking import report_to

log = logging.getLogger(__name__)
MAX_LENGTH = 1024
EVENT_FLUSH_S = 2.0
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", CHAT_TEMPLATE_FILE)
"""What a fine-tune keeps: the PEFT adapter and the chat template it was trained with."""
DEFAULT_TEMPLATE_EVENT = (
    "The base model has no chat template: training with synthd's default (ChatML-style turns, the "
    "assistant's ended by the EOS token), stored with the fine-tune, which chats in it."
)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``succeeded``, ``cancelled`` or ``paused``, with the step reached."""

    outcome: str
    step: int
    trained_tokens: int = 0


class JobCallback(TrainerCallback):
    """Reports ``job_id``'s progress: metrics events, kept checkpoint adapters, cancel and pause.

    A checkpoint's metrics are those measured at its own step only (``measured``): a step without
    validation has no ``valid_loss``, rather than the last validation's (OpenAI leaves it empty).
    Each checkpoint keeps ``chat_template``, the template the job trains with (set before training).
    """

    def __init__(self, repo: Repository, layout: JobLayout) -> None:
        self.repo = repo
        self.layout = layout
        self.job_id = layout.job_id
        self.stopped: str | None = None
        self.measured: dict[str, float] = {}
        self.measured_step: int | None = None
        self.pending: list[tuple[str, dict | None]] = []
        self.flushed = time.monotonic()
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.estimated_finish: int | None = None
        self.chat_template: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step
        return control

    def on_step_end(self, args, state, control, **kwargs):
        cancel, pause = self.repo.job_flags(self.job_id)
        if cancel:
            self.stopped = "cancelled"
            control.should_training_stop = True
            control.should_save = False
        elif pause:
            self.stopped = "paused"
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self._validation(state, logs)
        if "loss" not in logs:
            return
        self._measure(state.global_step, train_loss=float(logs["loss"]))
        data = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "train_loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "epoch": float(logs.get("epoch", 0.0)),
        }
        if "mean_token_accuracy" in logs:
            data["train_mean_token_accuracy"] = float(logs["mean_token_accuracy"])
            self._measure(state.global_step, train_mean_token_accuracy=data["train_mean_token_accuracy"])
        for key in ("rewards/margins", "rewards/accuracies"):
            if key in logs:
                data[key.replace("/", "_")] = float(logs[key])
        done = state.global_step - (self.first_step or 0)
        remaining = (time.monotonic() - self.started) / max(done, 1) * (state.max_steps - state.global_step)
        self.estimated_finish = int(time.time() + remaining)
        self.pending.append((f"Step {state.global_step}/{state.max_steps}: training loss={logs['loss']:.4f}", data))
        if time.monotonic() - self.flushed >= EVENT_FLUSH_S:
            self.flush()

    def _measure(self, step: int, **values: float) -> None:
        """Keep ``values`` as measured at ``step``; those of an earlier step are dropped."""
        if step != self.measured_step:
            self.measured, self.measured_step = {}, step
        self.measured.update(values)

    def checkpoint_metrics(self, step: int) -> dict:
        """The metrics of a checkpoint at ``step``: ``step`` and the values measured at it."""
        return {"step": step, **(self.measured if step == self.measured_step else {})}

    def _validation(self, state, logs: dict) -> None:
        data = {"step": state.global_step, "total_steps": state.max_steps, "valid_loss": float(logs["eval_loss"])}
        if "eval_mean_token_accuracy" in logs:
            data["valid_mean_token_accuracy"] = float(logs["eval_mean_token_accuracy"])
        self._measure(state.global_step, **{k: v for k, v in data.items() if k.startswith("valid_")})
        if "eval_rewards/accuracies" in logs:
            data["valid_rewards_accuracies"] = float(logs["eval_rewards/accuracies"])
        self.pending.append(
            (f"Step {state.global_step}/{state.max_steps}: validation loss={data['valid_loss']:.4f}", data)
        )

    def on_save(self, args, state, control, **kwargs):
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.chat_template is not None:
            (source / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        target = self.layout.checkpoint_adapter(state.global_step)
        copy_tree_atomic(source, target, ADAPTER_FILES, failpoint="checkpoint_write")
        metrics = self.checkpoint_metrics(state.global_step)
        self.flush()
        self.repo.add_checkpoint(self.job_id, state.global_step, metrics, str(source), str(target))

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()

    def flush(self) -> None:
        """Write buffered events (and the estimated finish) in one transaction."""
        if self.pending:
            self.repo.add_events(self.job_id, self.pending, estimated_finish=self.estimated_finish)
            self.pending = []
        self.flushed = time.monotonic()


def load_base(path: Path, dtype: torch.dtype = torch.float32):
    """Tokenizer and causal LM from a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def build_trainer(repo: Repository, job_id: str, model_path: Path, layout: JobLayout, callbacks: list):
    """The configured TRL trainer for ``job_id`` (not yet trained).

    Supervised rows are tokenised here with labels on trainable assistant tokens only
    (``synthd.training.sft_data``); DPO rows go to ``DPOTrainer`` as TRL's preference format.

    Raises:
        DataFormatError: the data has no trainable tokens.
    """
    from datasets import Dataset
    from peft import LoraConfig, PeftModel

    job = repo.get_job(job_id)
    assert job is not None, job_id
    method = job.method["type"]
    train = load_jsonl(repo.read_file(repo.get_file(job.training_file)), method)
    valid = load_jsonl(repo.read_file(repo.get_file(job.validation_file)), method) if job.validation_file else None
    hyper = Hyperparameters.from_dict(job.method[method]["hyperparameters"])
    lora = LoRASettings(**{**job.lora, "target_modules": tuple(job.lora["target_modules"])})
    tokenizer, model = load_base(model_path)
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        repo.add_events(job_id, [(DEFAULT_TEMPLATE_EVENT, None)])
    total_steps = hyper.total_steps(len(train.rows))
    n_evals = min(job.n_evals or DEFAULT_N_EVALS, total_steps)
    common = {
        "output_dir": str(layout.trainer_dir),
        "num_train_epochs": hyper.n_epochs,
        "per_device_train_batch_size": hyper.batch_size,
        "per_device_eval_batch_size": hyper.batch_size,
        "learning_rate": hyper.learning_rate,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps(total_steps, job.n_checkpoints),
        "save_total_limit": 1,
        "report_to": report_to(job.integrations),
        "run_name": job.id,
        "seed": job.seed,
        "data_seed": job.seed,
        "use_cpu": not torch.cuda.is_available(),
        "max_length": MAX_LENGTH,
        "disable_tqdm": True,
        "eval_strategy": "steps" if valid else "no",
        "eval_steps": save_steps(total_steps, n_evals),
        "include_num_input_tokens_seen": "all",
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
    }
    if job.init_adapter:
        model = PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True)
        peft_config = None
    else:
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(
            model=model,
            args=DPOConfig(beta=hyper.beta, **common),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
            train_dataset=Dataset.from_list(train.rows),
            eval_dataset=Dataset.from_list(valid.rows) if valid else None,
        )
    from trl import SFTConfig, SFTTrainer

    from synthd.training.sft_data import tokenize_rows

    train_set = Dataset.from_list(tokenize_rows(tokenizer, train.rows, MAX_LENGTH))
    valid_set = Dataset.from_list(tokenize_rows(tokenizer, valid.rows, MAX_LENGTH)) if valid else None
    return SFTTrainer(
        model=model,
        args=SFTConfig(**common),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        train_dataset=train_set,
        eval_dataset=valid_set,
    )


def run_job(repo: Repository, job_id: str, model_path: Path, layout: JobLayout) -> RunOutcome:
    """Train ``job_id`` until it ends, is cancelled or paused. On success the final adapter is in
    ``layout.adapter``; registering it is the scheduler's.

    Raises:
        Exception: anything training raises; the worker reports it as the job's error.
    """
    callback = JobCallback(repo, layout)
    trainer = build_trainer(repo, job_id, model_path, layout, [callback])
    callback.chat_template = trainer.processing_class.chat_template
    resume = latest_checkpoint(layout.trainer_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    if callback.stopped:
        return RunOutcome(callback.stopped, step, tokens)
    # the trainer always saves the last step, so the final adapter is that checkpoint's
    copy_tree_atomic(layout.trainer_dir / f"checkpoint-{step}", layout.adapter, ADAPTER_FILES, "checkpoint_write")
    return RunOutcome("succeeded", step, tokens)
