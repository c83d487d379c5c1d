"""``synthd demo`` (what ``make demo`` runs): the whole story on the embedded model, through the
official ``openai`` SDK against a fresh local server — warmup, chat with GPU preferences, streaming,
batched concurrent chats, an SFT job, a DPO job, chats with both fine-tunes against the base, and a
summary table of every step with its time and pass/fail."""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import openai
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synthd.cli.common import console, fail
from synthd.config import get_settings
from synthd.demo_data import DEMO_DATA
from synthd.models import shipped
from synthd.models.shipped import EMBEDDED_MODEL_ID, PullError
from synthd.server_process import ServerProcess, ServerStartError

MODEL = EMBEDDED_MODEL_ID
CONCURRENT_QUESTIONS = (
    "What is the capital of France?",
    "What is 2 + 2?",
    "How many days are in a week?",
    "What is the opposite of hot?",
    "What is the capital of Japan?",
    "What color is the sky on a clear day?",
    "What is the capital of Germany?",
    "What is the capital of England?",
)
SFT_HYPERPARAMETERS = {"n_epochs": 6, "batch_size": 5, "learning_rate_multiplier": 10}
DPO_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5, "beta": 0.1}


class DemoError(RuntimeError):
    """The demo could not run, or a step failed; the message says which."""


@dataclass
class StepResult:
    """One row of the summary."""

    name: str
    seconds: float
    ok: bool
    detail: str


class Demo:
    """Runs the steps in order against ``base_url``, printing as it goes."""

    def __init__(self, console: Console, server: ServerProcess) -> None:
        self.console = console
        self.server = server
        self.client = openai.OpenAI(base_url=server.base_url, api_key="demo", max_retries=0, timeout=600)
        self.results: list[StepResult] = []
        self.fine_tunes: dict[str, str] = {}

    def step(self, name: str, action: Callable[[], tuple[bool, str]]) -> None:
        """Run one step; record its time and outcome (an exception is a failed step)."""
        self.console.rule(f"{len(self.results) + 1}. {name}")
        started = time.perf_counter()
        try:
            ok, detail = action()
        except (openai.OpenAIError, httpx.HTTPError, KeyError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result = StepResult(name, time.perf_counter() - started, ok, detail)
        self.results.append(result)
        self.console.print(
            f"  [{'green' if ok else 'red'}]{'pass' if ok else 'FAIL'}[/] {escape(detail)} ({result.seconds:.1f}s)",
            highlight=False,
        )

    def warmup(self) -> tuple[bool, str]:
        started = httpx.post(f"{self.server.root_url}/warmup/{MODEL}", json={"gpu_preference": "auto"}).json()
        self.console.print(f"  POST /warmup/{MODEL} → {started}")
        while (status := httpx.get(f"{self.server.root_url}/warmup/status/{MODEL}").json())["status"] == "warming":
            time.sleep(0.2)
        self.console.print(f"  GET /warmup/status → {status}")
        return status["status"] == "warmed", f"{status['status']} on {status['gpu']}"

    def chat_auto(self) -> tuple[bool, str]:
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL,
            temperature=0,
            max_tokens=32,
            extra_body={"gpu_preference": "auto"},
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        reply = raw.parse()
        text = reply.choices[0].message.content
        self.console.print(
            f"  answer: {text!r}\n  X-GPU-Selected: {raw.headers.get('x-gpu-selected')}  "
            f"system_fingerprint: {reply.system_fingerprint}  usage: {reply.usage.total_tokens} tokens"
        )
        return "Paris" in text, f"gpu_preference=auto ran on {raw.headers.get('x-gpu-selected')}"

    def chat_refused(self) -> tuple[bool, str]:
        try:
            self.client.chat.completions.create(
                model=MODEL,
                max_tokens=8,
                extra_body={"gpu_preference": "H100:8"},
                messages=[{"role": "user", "content": "Hi"}],
            )
        except openai.APIStatusError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else str(exc)
            self.console.print(f"  gpu_preference=H100:8 → {exc.status_code}: {message}")
            return exc.status_code == 409, f"refused with {exc.status_code}"
        return False, "H100:8 was accepted on a machine without it"

    def stream(self) -> tuple[bool, str]:
        started, first, parts = time.perf_counter(), None, []
        self.console.print("  ", end="")
        for chunk in self.client.chat.completions.create(
            model=MODEL,
            temperature=0,
            max_tokens=48,
            stream=True,
            messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                parts.append(chunk.choices[0].delta.content)
                self.console.print(chunk.choices[0].delta.content, end="", highlight=False)
        self.console.print()
        ttft = (first - started) * 1000 if first else float("nan")
        return bool(parts), f"{len(parts)} chunks, TTFT {ttft:.0f} ms"

    def concurrent(self) -> tuple[bool, str]:
        started = time.perf_counter()
        answers = asyncio.run(self._ask_all(CONCURRENT_QUESTIONS))
        wall = time.perf_counter() - started
        table = Table("question", "answer", "latency")
        for question, (answer, latency) in zip(CONCURRENT_QUESTIONS, answers):
            table.add_row(question, answer.replace("\n", " ")[:70], f"{latency * 1000:.0f} ms")
        self.console.print(table)
        summed = sum(latency for _, latency in answers)
        return all(a for a, _ in answers), f"8 requests in {wall:.1f}s wall, {summed:.1f}s of summed latency (batched)"

    async def _ask_all(self, questions) -> list[tuple[str, float]]:
        async with openai.AsyncOpenAI(base_url=self.server.base_url, api_key="demo", max_retries=0) as client:

            async def ask(question: str) -> tuple[str, float]:
                started = time.perf_counter()
                reply = await client.chat.completions.create(
                    model=MODEL, temperature=0, max_tokens=40, messages=[{"role": "user", "content": question}]
                )
                return reply.choices[0].message.content or "", time.perf_counter() - started

            return list(await asyncio.gather(*(ask(q) for q in questions)))

    def fine_tune(self, kind: str, data_file: str, hyperparameters: dict) -> tuple[bool, str]:
        path = DEMO_DATA / data_file
        uploaded = self.client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune")
        job = self.client.fine_tuning.jobs.create(
            model=MODEL,
            training_file=uploaded.id,
            suffix=f"demo-{kind}",
            seed=7,
            method={"type": kind, kind: {"hyperparameters": hyperparameters}},
        )
        self.console.print(f"  uploaded {path.name} as {uploaded.id}; job {job.id} ({kind}, {hyperparameters})")
        seen = 0
        while (job := self.client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            events = self.client.fine_tuning.jobs.list_events(job.id, limit=5).data
            step = next((e.data for e in events if e.data and "train_loss" in e.data and "total_steps" in e.data), None)
            if step and step["step"] != seen:
                seen = step["step"]
                self.console.print(
                    f"  step {step['step']}/{step['total_steps']} loss {step['train_loss']:.3f}", highlight=False
                )
            time.sleep(1)
        if job.status != "succeeded":
            return False, f"{job.status}: {job.error.message if job.error else ''}"
        self.fine_tunes[kind] = job.fine_tuned_model
        return True, f"{job.fine_tuned_model} ({job.trained_tokens} trained tokens)"

    def compare(self, kind: str, question: str, expect: Callable[[str, str], bool]) -> tuple[bool, str]:
        model = self.fine_tunes.get(kind)
        if model is None:
            return False, f"no {kind} model to compare"
        answers = {}
        for name in (MODEL, model):
            reply = self.client.chat.completions.create(
                model=name, temperature=0, max_tokens=24, messages=[{"role": "user", "content": question}]
            )
            answers[name] = reply.choices[0].message.content
        self.console.print(f"  question: {question}")
        self.console.print(f"  base      : {answers[MODEL]!r}\n  fine-tune : {answers[model]!r}", highlight=False)
        return expect(answers[MODEL], answers[model]), "answers differ as trained" if answers[MODEL] != answers[
            model
        ] else "no change"

    def summary(self) -> None:
        table = Table("#", "step", "seconds", "result", "detail", title="synthd demo summary")
        for index, result in enumerate(self.results, 1):
            table.add_row(
                str(index),
                result.name,
                f"{result.seconds:.1f}",
                "[green]pass[/]" if result.ok else "[red]FAIL[/]",
                result.detail,
            )
        self.console.print(table)


def pull_model(console: Console, models_dir: Path) -> None:
    """The demos' first step: pull the embedded model (a no-op when cached), saying where it is.

    Raises:
        DemoError: the pull failed.
    """
    console.rule("embedded model")
    try:
        folder = shipped.pull_model(models_dir, step=lambda msg: console.print(f"  {msg}"))
    except PullError as exc:
        raise DemoError(str(exc)) from None
    console.print(f"  {MODEL} in {folder}")


def run_demo(console: Console, port: int = 0) -> None:
    """Pull the embedded model, serve it on 127.0.0.1, run every step, stop the server.

    Raises:
        DemoError: the pull or the server start failed, or any step failed.
    """
    settings = get_settings()
    started = time.perf_counter()
    pull_model(console, settings.models_dir)
    log_path = settings.home / "demo-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ServerProcess(port=port, log_path=log_path) as server:
            console.print(f"  synthd serve on {server.base_url} (log {log_path})")
            demo = Demo(console, server)
            heldout = json.loads((DEMO_DATA / "sft_facts_heldout.jsonl").read_text().splitlines()[0])
            demo.step("warmup", demo.warmup)
            demo.step("chat, gpu_preference auto", demo.chat_auto)
            demo.step("chat, gpu_preference H100:8 (not here)", demo.chat_refused)
            demo.step("streamed chat", demo.stream)
            demo.step("8 concurrent chats", demo.concurrent)
            demo.step(
                "SFT job (sft_facts.jsonl)",
                lambda: demo.fine_tune("supervised", "sft_facts.jsonl", SFT_HYPERPARAMETERS),
            )
            demo.step(
                "DPO job (dpo_style.jsonl)",
                lambda: demo.fine_tune("dpo", "dpo_style.jsonl", DPO_HYPERPARAMETERS),
            )
            demo.step(
                "SFT model vs base (held-out question)",
                lambda: demo.compare(
                    "supervised",
                    heldout["question"],
                    lambda base, tuned: heldout["answer"] in tuned and heldout["answer"] not in base,
                ),
            )
            demo.step(
                "DPO model vs base",
                lambda: demo.compare("dpo", "How do I plant a tree?", lambda base, tuned: base != tuned),
            )
            demo.summary()
    except ServerStartError as exc:
        raise DemoError(str(exc)) from None
    failed = [r.name for r in demo.results if not r.ok]
    console.rule(f"done in {time.perf_counter() - started:.0f}s, server stopped")
    if failed:
        raise DemoError(f"{len(failed)} step(s) failed: {', '.join(failed)}")


def demo(
    port: Annotated[int, typer.Option(help="Port for the demo server (0 picks a free one).", min=0, max=65535)] = 0,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="Run it on a local three-node Ray cluster with declared GPUs (needs synthd[ray])."
        ),
    ] = False,
) -> None:
    """Pull the embedded model, start a server, run a short real session through it, stop it.

    Example: synthd demo --cluster
    """
    try:
        if cluster:
            from synthd.cli.demo_cluster import run_cluster_demo

            run_cluster_demo(console, port)
        else:
            run_demo(console, port)
    except DemoError as exc:
        fail(str(exc))
