"""``synthd eval`` run as a user would: against a fake OpenAI-wire server with scripted answers
(exact report numbers) and against a live synthd server with the embedded model."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from synthd.evals.battery import BUILTIN_BATTERY
from synthd.evals.checkers import check_answer
from tests.conftest import MODEL
from tests.fakes import openai_server
from tests.fakes.script import Reply

CASES = [
    {"id": "m-right", "category": "math", "prompt": "What is 6*7?", "check": {"kind": "math", "answer": 42}},
    {"id": "m-wrong", "category": "math", "prompt": "What is 10-3?", "check": {"kind": "math", "answer": 7}},
    {
        "id": "c-right",
        "category": "coding",
        "prompt": "Write add(a, b).",
        "check": {"kind": "code", "entry_point": "add", "tests": "assert add(2, 3) == 5"},
    },
    {
        "id": "c-loop",
        "category": "coding",
        "prompt": "Write spin().",
        "check": {"kind": "code", "entry_point": "spin", "tests": "spin()", "timeout_s": 1},
    },
    {
        "id": "r-right",
        "category": "reasoning",
        "prompt": "Capital of France?",
        "check": {"kind": "exact", "answers": ["Paris"]},
    },
    {
        "id": "k-error",
        "category": "creative",
        "prompt": "A line about salt.",
        "check": {"kind": "constraints", "required_words": ["salt"]},
    },
]
ANSWERS = {
    "6*7": Reply(text="6*7 = 42, so the answer is 42.", delay_s=0.3),
    "10-3": Reply(text="8"),
    "add(a, b)": Reply(text="```python\ndef add(a, b):\n    return a + b\n```"),
    "spin()": Reply(text="```python\ndef spin():\n    while True:\n        pass\n```"),
    "France": Reply(text="**Paris**."),
    "salt": Reply(status=400, error_type="invalid_request_error", message="content policy, scripted"),
}


def synthd_eval(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthd.cli", "eval", *args],
        capture_output=True,
        check=False,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def test_report_numbers_against_scripted_openai_answers(fakes, tmp_path: Path) -> None:
    battery = tmp_path / "battery.jsonl"
    battery.write_text("\n".join(json.dumps(case) for case in CASES) + "\n")
    for part, reply in ANSWERS.items():
        fakes["openai"].script.answer(part, reply)
    out = tmp_path / "out"
    # --unsafe-sandbox only matters where bubblewrap cannot run (tests/test_sandbox.py covers it).
    result = synthd_eval(
        "--models",
        "gpt-4o-mini,claude-3-haiku-20240307",
        "--battery",
        str(battery),
        "--repeats",
        "2",
        "--concurrency",
        "3",
        "--out",
        str(out),
        "--unsafe-sandbox",
        env={
            "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",
            "OPENAI_API_KEY": openai_server.API_KEY,
            "ANTHROPIC_API_KEY": "",
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())

    [model] = report["models"]
    assert (model["model"], model["provider"]) == ("gpt-4o-mini", "openai")
    assert model["tally"] == {"passed": 6, "failed": 4, "errors": 2, "total": 12, "success_rate": 0.5}
    assert report["skipped"] == [
        {"model": "claude-3-haiku-20240307", "reason": "anthropic: no API key: set ANTHROPIC_API_KEY or pass api_key="}
    ]
    assert {c: (t["passed"], t["failed"], t["errors"], t["total"]) for c, t in model["by_category"].items()} == {
        "math": (2, 2, 0, 4),
        "coding": (2, 2, 0, 4),
        "reasoning": (2, 0, 0, 2),
        "creative": (0, 0, 2, 2),
    }
    assert report["totals"] == model["tally"]
    assert len(fakes["openai"].script.requests) == 12

    latencies = [a["latency_s"] for a in report["attempts"] if a["latency_s"] is not None]
    assert len(latencies) == 10
    assert model["latency"] == {
        "mean_s": statistics.fmean(latencies),
        "fastest_s": min(latencies),
        "slowest_s": max(latencies),
    }
    assert model["latency_by_category"]["math"]["slowest_s"] >= 0.3
    assert model["latency_by_category"]["creative"] == {"mean_s": None, "fastest_s": None, "slowest_s": None}

    reasons = {(a["case_id"], a["status"], a["reason"]) for a in report["attempts"] if a["status"] != "passed"}
    assert ("m-wrong", "failed", "expected 7, got 8") in reasons
    assert any(case == "c-loop" and status == "failed" and "timed out" in reason for case, status, reason in reasons)
    assert ("k-error", "error", "BadRequestError: openai: 400 content policy, scripted") in reasons

    markdown = (out / "report.md").read_text()
    assert "| gpt-4o-mini | openai | 6/12 | 50.0% | 4 | 2 |" in markdown
    assert "| math | 2/4 (50.0%) | 2/4 (50.0%) |" in markdown
    assert "- **claude-3-haiku-20240307**: anthropic: no API key" in markdown
    assert "- Attempts: 12; passed: 6; failed: 4; errors: 2" in markdown
    assert "Reason: expected 7, got 8" in markdown and "```text\n8\n```" in markdown
    assert "Prompt: What is 10-3?" in markdown
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Overall: 6/12 passed (50.0%), 4 failed, 2 errors" in result.stdout


def test_live_synthd_run_reports_what_the_checkers_say(server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = synthd_eval(
        "--categories",
        "math,reasoning",
        "--max-tokens",
        "48",
        "--out",
        str(out),
        "--base-url",
        server.root_url,
        env={"SYNTH_API_URL": "http://127.0.0.1:9", "TEST_MODEL": ""},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    [model] = report["models"]
    assert (model["model"], model["provider"]) == (MODEL, "synthd")
    cases = {case.id: case for case in BUILTIN_BATTERY}
    attempts = report["attempts"]
    assert sorted(a["case_id"] for a in attempts) == sorted(
        case.id for case in BUILTIN_BATTERY if case.category in ("math", "reasoning")
    )
    for attempt in attempts:
        verdict = check_answer(cases[attempt["case_id"]], attempt["answer"])
        assert attempt["status"] == ("passed" if verdict.passed else "failed")
        cut = not verdict.passed and attempt["finish_reason"] == "length"
        assert attempt["reason"] == (f"cut at max_tokens: {verdict.reason}" if cut else verdict.reason)
        assert attempt["latency_s"] > 0 and attempt["prompt"] == cases[attempt["case_id"]].prompt
    passed = sum(a["status"] == "passed" for a in attempts)
    assert model["tally"] == {
        "passed": passed,
        "failed": 10 - passed,
        "errors": 0,
        "total": 10,
        "success_rate": passed / 10,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--categories", "maths"], "unknown categories: maths"),
        (["--battery", "/nonexistent/b.jsonl"], "cannot read"),
        (["--battery", "/etc/hostname"], "unknown battery format"),
        (["--models", " , "], "--models is empty"),
        (["--models", "gpt-4o", "--categories", "math"], "no model could be evaluated"),
        (["--concurrency", "0"], "--concurrency must be between 1 and 256, got 0"),
        (["--repeats", "-1"], "--repeats must be between 1 and 100"),
        (["--temperature", "nan"], "--temperature must be between"),
        (["--out", "/etc/hostname"], "cannot use /etc/hostname for the report"),
        (["--battery", "MATH_ONLY", "--categories", "coding"], "no case in the categories coding"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    math_only = tmp_path / "math.jsonl"
    math_only.write_text(json.dumps(CASES[0]) + "\n")
    args = [str(math_only) if arg == "MATH_ONLY" else arg for arg in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    result = synthd_eval(*args, *out, env={"OPENAI_API_KEY": ""})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: ") and message in last[0]


def test_coding_cases_need_bubblewrap_or_unsafe_sandbox(fakes, tmp_path: Path) -> None:
    battery = tmp_path / "battery.jsonl"
    battery.write_text("\n".join(json.dumps(case) for case in CASES[:3]) + "\n")
    fakes["openai"].script.answer("add(a, b)", ANSWERS["add(a, b)"])
    env = {
        "PATH": str(tmp_path),
        "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",  # no bwrap on this PATH
        "OPENAI_API_KEY": openai_server.API_KEY,
    }
    common = ["--models", "gpt-4o-mini", "--battery", str(battery), "--out", str(tmp_path / "out")]

    refused = synthd_eval(*common, env=env)
    assert refused.returncode == 1 and fakes["openai"].script.requests == []
    assert refused.stderr.strip().splitlines() == [
        (
            "error: coding cases run model-written code under bubblewrap, and bwrap is not installed (Debian/Ubuntu: "
            "apt-get install bubblewrap); install bubblewrap, leave coding out with --categories, or pass "
            "--unsafe-sandbox to run the code under the audit-hook guard alone"
        )
    ]

    unsafe = synthd_eval(*common, "--unsafe-sandbox", env=env)
    assert unsafe.returncode == 0, unsafe.stderr
    assert (
        "warning: --unsafe-sandbox: coding answers run under the audit-hook guard alone, without bubblewrap "
        "(bwrap is not installed"
    ) in unsafe.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    coding = [a for a in report["attempts"] if a["category"] == "coding"]
    assert [(a["case_id"], a["status"], a["reason"]) for a in coding] == [("c-right", "passed", "all tests passed")]

    math_only = synthd_eval(*common, "--categories", "math", env=env)
    assert math_only.returncode == 0 and "warning" not in math_only.stdout


def test_keys_are_redacted_from_reasons(fakes, tmp_path: Path) -> None:
    service_token = "plain-words-service-token-value"
    leaked = "sk-proj-LeakedKey0123456789abcdefGHIJ"
    cases = [
        {"id": "e-key", "category": "math", "prompt": "Key error", "check": {"kind": "math", "answer": 1}},
        {
            "id": "c-raise",
            "category": "coding",
            "prompt": "Write boom().",
            "check": {"kind": "code", "entry_point": "boom", "tests": "boom()"},
        },
    ]
    battery = tmp_path / "battery.jsonl"
    battery.write_text("\n".join(json.dumps(case) for case in cases) + "\n")
    fakes["openai"].script.answer(
        "Key error",
        Reply(
            status=401,
            error_type="invalid_request_error",
            message=f"Incorrect API key provided: {openai_server.API_KEY}, {leaked}, token {service_token}",
        ),
    )
    fakes["openai"].script.answer(
        "boom()",
        Reply(
            text=(
                "```python\ndef boom():\n    raise RuntimeError('Authorization: Bearer abc.DEF-0123456789xyz and '\n"
                "                       'sk-ant-api03-AbCdEf0123456789 and ' + 'ab12' * 10)\n```"
            )
        ),
    )
    out = tmp_path / "out"
    result = synthd_eval(
        "--models",
        "gpt-4o-mini",
        "--battery",
        str(battery),
        "--out",
        str(out),
        "--unsafe-sandbox",
        env={
            "OPENAI_BASE_URL": f"{fakes['openai'].url}/v1",
            "OPENAI_API_KEY": openai_server.API_KEY,
            "BILLING_SERVICE_TOKEN": service_token,
        },
    )
    assert result.returncode == 0, result.stderr
    reasons = {a["case_id"]: a["reason"] for a in json.loads((out / "report.json").read_text())["attempts"]}
    assert reasons == {
        "e-key": "AuthenticationError: openai: 401 Incorrect API key provided: [REDACTED], [REDACTED], "
        "token [REDACTED]",
        "c-raise": "RuntimeError: Authorization: Bearer [REDACTED] and [REDACTED] and [REDACTED]",
    }
    markdown_reasons = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("Reason: ")]
    assert sorted(markdown_reasons) == sorted(f"Reason: {reason}" for reason in reasons.values())
    for secret in (openai_server.API_KEY, leaked, service_token, "abc.DEF-0123456789xyz", "sk-ant-api03", "ab12ab12"):
        assert secret not in result.stdout + result.stderr  # the console lists each failure with its reason
