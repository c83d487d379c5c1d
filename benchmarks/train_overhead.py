"""What synthd adds to training: the same SFT and DPO runs as a bare TRL script and as synthd jobs.

Both sides train the embedded model (float32, CPU) with LoRA r=8 (alpha 16, dropout 0.05, the same
target modules) on the same file, with the same batch size, epochs, learning rate and seed:
SFT on sft_facts.jsonl (synthd.demo_data) (15 rows, batch 5, 3 epochs: 9 steps), DPO on
dpo_style.jsonl (12 rows, batch 4, 3 epochs: 9 steps). Reported per run:

- step time: median wall time between consecutive logged steps (steps 2..N);
- start to first step: bare TRL from launching ``python`` to its first logged step; synthd from
  ``POST /v1/fine_tuning/jobs`` to the job's first logged step (read from the job's TensorBoard
  events, which carry wall times).

synthd runs its jobs one after another on one server, so the first job starts a worker from
scratch and later ones find a preloaded standby worker; both are shown.

Usage: python benchmarks/train_overhead.py [--repeats 3] [--methods sft,dpo]
"""

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthd.demo_data import DEMO_DATA

MODEL = "SmolLM2-135M-Instruct"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
RUNS = {
    "sft": {"file": "sft_facts.jsonl", "method": "supervised", "batch_size": 5, "n_epochs": 3},
    "dpo": {"file": "dpo_style.jsonl", "method": "dpo", "batch_size": 4, "n_epochs": 3},
}
SEED = 0


def bare(method: str, out: Path) -> None:
    """The bare TRL script: what a user would write by hand (run in a child process)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from synthd.config import get_settings
    from synthd.training.config import BASE_LEARNING_RATE, DEFAULT_TARGET_MODULES
    from synthd.training.data import load_jsonl

    run = RUNS[method]
    path = get_settings().models_dir / MODEL
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = load_jsonl((DEMO_DATA / run["file"]).read_bytes(), run["method"]).rows
    if method == "sft":
        rows = [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in rows]
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                times.append(time.time())

    common = {
        "output_dir": str(out.parent / "bare"),
        "num_train_epochs": run["n_epochs"],
        "per_device_train_batch_size": run["batch_size"],
        "learning_rate": BASE_LEARNING_RATE,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": SEED,
        "use_cpu": True,
        "max_length": 1024,
        "disable_tqdm": True,
    }
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(DEFAULT_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            processing_class=tokenizer,
            peft_config=peft_config,
            train_dataset=Dataset.from_list(rows),
            callbacks=[Clock()],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(beta=0.1, **common),
            processing_class=tokenizer,
            peft_config=peft_config,
            train_dataset=Dataset.from_list(rows),
            callbacks=[Clock()],
        )
    trainer.train()
    out.write_text(json.dumps(times))


def run_bare(method: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "times.json"
        started = time.time()
        subprocess.run(
            [sys.executable, __file__, "--bare", method, "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times = json.loads(out.read_text())
    return step_time(times), times[0] - started


def step_time(times: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def tensorboard_times(folder: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [event.wall_time for event in accumulator.Scalars("train/loss")]


def run_synthd(client, home: Path, method: str, file_id: str) -> tuple[float, float]:
    run = RUNS[method]
    hyper = {"n_epochs": run["n_epochs"], "batch_size": run["batch_size"], "learning_rate_multiplier": 1}
    if method == "dpo":
        hyper["beta"] = 0.1
    posted = time.time()
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file_id,
        seed=SEED,
        method={"type": run["method"], run["method"]: {"hyperparameters": hyper}},
        extra_body={"lora": LORA, "n_checkpoints": 1},
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise SystemExit(f"{job.id} {job.status}: {job.error}")
    times = tensorboard_times(home / "training" / job.id / "tensorboard")
    return step_time(times), times[0] - posted


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="sft,dpo")
    parser.add_argument("--bare")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.bare:
        bare(args.bare, args.out)
        return
    import openai

    from synthd.config import get_settings
    from synthd.server_process import ServerProcess

    methods = args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        env = {
            "SYNTHD_HOME": folder,
            "SYNTHD_MODELS_DIR": str(get_settings().models_dir),
            "SYNTHD_API_KEY": "",
            "SYNTH_API_KEY": "",
            "SYNTHD_DATABASE_URL": "",
        }
        with ServerProcess(log_path=home / "server.log", env=env, ready_timeout_s=900) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)
            files = {
                m: client.files.create(
                    file=(RUNS[m]["file"], (DEMO_DATA / RUNS[m]["file"]).read_bytes()), purpose="fine-tune"
                ).id
                for m in methods
            }
            for method in methods:
                bare_runs = [run_bare(method) for _ in range(args.repeats)]
                synthd_runs = [run_synthd(client, home, method, files[method]) for _ in range(args.repeats)]
                rows.append((method, bare_runs, synthd_runs))
                print(method, "bare", bare_runs, "synthd", synthd_runs, flush=True)
    print()
    print("| method | bare TRL step s | synthd step s | ratio | bare start → 1st step s | synthd POST → 1st step s |")
    print("|---|---|---|---|---|---|")
    for method, bare_runs, synthd_runs in rows:
        ratio = statistics.median(s[0] for s in synthd_runs) / statistics.median(b[0] for b in bare_runs)
        print(
            f"| {method} | {spread([b[0] for b in bare_runs])} | {spread([s[0] for s in synthd_runs])} | "
            f"{ratio:.2f}× | {spread([b[1] for b in bare_runs])} | {spread([s[1] for s in synthd_runs])} |"
        )
    print(f"\nmedian (min–max) of {args.repeats} runs each; synthd runs its jobs one after another on one server.")


if __name__ == "__main__":
    main()
