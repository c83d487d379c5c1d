"""Do ``auto`` hyperparameters teach facts? Train the embedded model on sft_facts.jsonl (synthd.demo_data)
(3 facts x 5 phrasings) with every hyperparameter left at ``auto``, then ask the held-out
paraphrases in sft_facts_heldout.jsonl through the chat API (greedy) and count the answers
that contain the taught fact.

Usage: python benchmarks/auto_hyperparameters.py [--runs N]
Prints the chosen hyperparameters, the wall time and the score of each run; exits 1 if a run scores
below 3/3.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import openai

from synthd.config import get_settings
from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess

MODEL = "SmolLM2-135M-Instruct"


def run_once(seed: int) -> tuple[dict, float, int, list[str]]:
    with tempfile.TemporaryDirectory() as home:
        env = {
            "SYNTHD_HOME": home,
            "SYNTHD_MODELS_DIR": str(get_settings().models_dir),
            "SYNTHD_API_KEY": "",
            "SYNTH_API_KEY": "",
            "SYNTHD_DATABASE_URL": "",
        }
        with ServerProcess(log_path=Path(home) / "server.log", env=env, ready_timeout_s=900) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=300)
            data = client.files.create(
                file=("facts.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes()), purpose="fine-tune"
            )
            started = time.monotonic()
            job = client.fine_tuning.jobs.create(model=MODEL, training_file=data.id, seed=seed)
            while job.status not in ("succeeded", "failed", "cancelled"):
                time.sleep(1)
                job = client.fine_tuning.jobs.retrieve(job.id)
            elapsed = time.monotonic() - started
            if job.status != "succeeded":
                raise SystemExit(f"job {job.status}: {job.error}")
            answers, score = [], 0
            for line in (DEMO_DATA / "sft_facts_heldout.jsonl").read_text().splitlines():
                case = json.loads(line)
                reply = client.chat.completions.create(
                    model=job.fine_tuned_model,
                    temperature=0,
                    max_tokens=30,
                    messages=[{"role": "user", "content": case["question"]}],
                )
                text = reply.choices[0].message.content or ""
                answers.append(text)
                score += case["answer"] in text
            return job.hyperparameters.model_dump(), elapsed, score, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    worst = 3
    for seed in range(args.runs):
        hyper, elapsed, score, answers = run_once(seed)
        worst = min(worst, score)
        print(f"seed {seed}: hyperparameters {hyper}; trained in {elapsed:.0f} s; held-out answers {score}/3")
        for answer in answers:
            print(f"  {answer!r}")
    sys.exit(0 if worst == 3 else 1)


if __name__ == "__main__":
    main()
