"""The eval checkers, the code sandbox's audit-hook guard and battery loading; no server, no model.

Code runs under bubblewrap where it can run, else under the guard alone (``unsafe_sandbox``): these
tests are about the checkers and the guard; tests/unit/test_sandbox.py covers bubblewrap."""

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from synthd.evals.battery import (
    BUILTIN_BATTERY,
    BatteryError,
    Case,
    CodeCheck,
    ConstraintsCheck,
    ExactCheck,
    MathCheck,
    load_battery,
    select_categories,
)
from synthd.evals.checkers import CheckResult, check_answer
from synthd.evals.redaction import REDACTED, redact_secrets
from synthd.evals.sandbox import (
    BLOCKED_EXIT_CODE,
    CREATED_FILES_LIMIT,
    DISK_LIMIT_BYTES,
    OUTPUT_TAIL_CHARS,
    REASON_MAX_CHARS,
    run_sandboxed,
)


def case(check: dict, category: str = "math") -> Case:
    return Case.model_validate({"id": "t", "category": category, "prompt": "p", "check": check})


def sandbox(source: str, timeout_s: float = 10, memory_mb: int = 512):
    return run_sandboxed(source, timeout_s=timeout_s, memory_mb=memory_mb, unsafe_sandbox=True)


def judge(case: Case, answer: str) -> CheckResult:
    return check_answer(case, answer, unsafe_sandbox=True)


# --- math ---


@pytest.mark.parametrize(
    ("answer", "extracted"),
    [
        ("Adding them up gives 41, then one more: \\boxed{42}. Check: 40 + 2.", "42"),
        ("The total is 1,234 apples.", "1234"),
        ("It is 3/4 of the cake.", "0.75"),
        ("The answer is \\frac{3}{4}", "0.75"),
        ("Answer: -12.5 degrees, measured at 3 pm", "-12.5"),
        ("So 5 + 7 = 12", "12"),
    ],
)
def test_math_extracts_the_final_number(answer: str, extracted: str) -> None:
    result = judge(case({"kind": "math", "answer": float(extracted)}), answer)
    assert (result.passed, result.extracted, result.reason) == (True, extracted, f"got {extracted}, as expected")


def test_math_wrong_and_missing_numbers() -> None:
    math_case = case({"kind": "math", "answer": 42})
    assert judge(math_case, "I think it is 41.") == judge(math_case, "41")
    wrong = judge(math_case, "I think it is 41.")
    assert (wrong.passed, wrong.reason, wrong.extracted) == (False, "expected 42, got 41", "41")
    none = judge(math_case, "I cannot tell.")
    assert (none.passed, none.reason, none.extracted) == (False, "no number in the answer", None)


def test_math_tolerance_edges() -> None:
    math_case = case({"kind": "math", "answer": 100, "rel_tol": 1e-4, "abs_tol": 0})
    assert judge(math_case, "100.009").passed is True
    outside = judge(math_case, "100.02")
    assert (outside.passed, outside.reason) == (False, "expected 100, got 100.02")


# --- code ---

SQUARE = {"kind": "code", "entry_point": "f", "tests": "assert f(3) == 9\nassert f(-2) == 4\n"}


def test_code_that_passes() -> None:
    answer = (
        "Here you go:\n```python\ndef f(x):\n    return x * x\n\nif __name__ == '__main__':\n    f(int(input()))\n```\n"
    )
    result = judge(case(SQUARE, "coding"), answer)
    assert (result.passed, result.reason) == (True, "all tests passed")
    assert result.extracted.startswith("def f(x):")


def test_code_failing_an_assert() -> None:
    result = judge(case(SQUARE, "coding"), "```python\ndef f(x):\n    return x + x\n```")
    assert (result.passed, result.reason) == (False, "AssertionError: assert f(3) == 9")


def test_code_with_a_syntax_error_or_without_the_entry_point() -> None:
    broken = judge(case(SQUARE, "coding"), "```python\ndef f(x:\n    return x\n```")
    assert broken.passed is False and broken.reason.startswith("SyntaxError: ") and "(line 1)" in broken.reason
    other = judge(case(SQUARE, "coding"), "```python\ndef g(x):\n    return x * x\n```")
    assert (other.passed, other.reason) == (False, "no function named f in the answer")
    prose = judge(case(SQUARE, "coding"), "Square the number.")
    assert (prose.passed, prose.reason, prose.extracted) == (False, "no function named f in the answer", None)


def test_code_that_never_ends_times_out() -> None:
    start = time.monotonic()
    result = sandbox("while True:\n    pass\n", timeout_s=1)
    assert time.monotonic() - start < 5
    assert (result.status, result.returncode, result.reason) == ("timeout", None, "timed out after 1.0 s")
    forever = "```python\ndef f(x):\n    while True:\n        pass\n```"
    looping = judge(case({**SQUARE, "timeout_s": 1}, "coding"), forever)
    assert (looping.passed, looping.reason) == (False, "timed out after 1.0 s")


def test_code_that_allocates_too_much_fails_with_the_memory_limit() -> None:
    result = sandbox("x = [0] * (10 ** 9)\n", memory_mb=128)
    assert (result.status, result.returncode, result.reason) == ("failed", 1, "MemoryError (limit 128 MB)")


def test_early_exit_is_not_success() -> None:
    result = sandbox("import sys\nsys.exit(0)\nassert False\n")
    assert (result.status, result.reason) == ("failed", "exited before the end of the program (exit status 0)")


def test_writing_to_inherited_fds_and_exiting_early_does_not_forge_a_pass() -> None:
    forged = (
        "```python\nimport os\ndef f(x): return 0\nfor fd in range(3, 10):\n  try: os.write(fd, b'done')\n"
        "  except OSError: pass\nos._exit(0)\n```"
    )
    result = judge(case({"kind": "code", "entry_point": "f", "tests": "assert f(2) == 4"}, "coding"), forged)
    assert (result.passed, result.reason) == (False, "exited before the end of the program (exit status 0)")
    direct = sandbox(
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'done\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\nassert False\n"
    )
    assert (direct.status, direct.returncode) == ("failed", 0)


@pytest.mark.parametrize("mode", ["r", "a"])
def test_the_report_file_cannot_be_opened(mode: str) -> None:
    result = sandbox(f"import os\nopen(os.path.join(os.path.dirname(os.getcwd()), 'report'), {mode!r})\n")
    assert result.status == "blocked" and result.reason.startswith("blocked: open(") and "report" in result.reason


def test_reading_process_memory_is_blocked() -> None:
    result = sandbox("open('/proc/self/mem', 'rb')\n")
    assert (result.status, result.reason) == ("blocked", "blocked: open('/proc/self/mem', 'r')")


def test_filling_the_disk_with_many_files_is_blocked() -> None:
    start = time.monotonic()
    result = sandbox(
        "data = b'x' * (9 * 2**20)\nfor i in range(60):\n    with open(f'f{i}.bin', 'wb') as f:\n"
        "        f.write(data)\n"
    )
    assert result.status == "blocked" and time.monotonic() - start < 10
    limit_mb = DISK_LIMIT_BYTES // 2**20
    # f0 .. f7 hold 72 MB, so creating f8 is refused (the audit event shows the raw mode 'w').
    assert result.reason == f"blocked: open('f8.bin', 'w'): its directory holds more than {limit_mb} MB"


def test_filling_files_created_beforehand_fails_at_the_end() -> None:
    count = DISK_LIMIT_BYTES // (9 * 2**20) + 1
    result = sandbox(
        f"files = [open(f'f{{i}}.bin', 'wb') for i in range({count})]\n"
        "for f in files:\n    f.write(b'x' * (9 * 2**20))\n    f.close()\n"
    )
    assert (result.status, result.returncode) == ("failed", 0)
    assert count * 9 * 2**20 < result.disk_bytes < count * 9 * 2**20 + 1000  # plus program.py
    assert result.reason == f"wrote {count * 9:.1f} MB to its directory (limit {DISK_LIMIT_BYTES // 2**20} MB)"


def test_creating_too_many_files_is_blocked() -> None:
    result = sandbox(
        "import os\nfor i in range(100):\n    open(f'f{i}.txt', 'w').close()\n    os.remove(f'f{i}.txt')\n"
    )
    assert (result.status, result.reason) == (
        "blocked",
        f"blocked: open('f{CREATED_FILES_LIMIT}.txt', 'w'): more than {CREATED_FILES_LIMIT} files created",
    )
    reopened = sandbox(
        "for i in range(200):\n    open('log.txt', 'a').write('x')\nassert open('log.txt').read() == 'x' * 200\n"
    )
    assert reopened.status == "ok"


def test_a_correct_solution_printing_a_lot_passes() -> None:
    answer = "```python\ndef f(x):\n    return x * x\n\nprint('y' * (12 * 2**20))\n```"
    result = judge(case(SQUARE, "coding"), answer)
    assert (result.passed, result.reason) == (True, "all tests passed")
    flood = sandbox("print('a' * (12 * 2**20))\nprint('end')\n")
    assert (flood.status, flood.stdout) == ("ok", "a" * (OUTPUT_TAIL_CHARS - 5) + "\nend\n")


def test_a_stderr_flood_keeps_the_reason_short() -> None:
    result = sandbox("import sys\nsys.stderr.write('z' * 100000)\nsys.exit(3)\n")
    assert result.status == "failed" and len(result.reason) <= REASON_MAX_CHARS
    assert result.reason.startswith("zzz") and len(result.stderr) == OUTPUT_TAIL_CHARS


# --- sandbox guard ---


def test_deleting_a_file_outside_is_blocked(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = sandbox(f"import os\nos.remove({str(victim)!r})\n")
    assert (result.status, result.returncode) == ("blocked", BLOCKED_EXIT_CODE)
    assert result.reason == f"blocked: os.remove({str(victim)!r})"
    assert f"SANDBOX-BLOCKED: os.remove({str(victim)!r})" in result.stderr
    assert victim.read_text() == "precious"


def test_catching_the_block_does_not_help(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    source = f"import os\ntry:\n    os.unlink({str(victim)!r})\nexcept BaseException:\n    pass\nprint('survived')\n"
    result = sandbox(source)
    assert result.status == "blocked" and "survived" not in result.stdout
    assert victim.exists()


def test_rmtree_outside_is_blocked(tmp_path: Path) -> None:
    (tmp_path / "tree" / "leaf").mkdir(parents=True)
    result = sandbox(f"import shutil\nshutil.rmtree({str(tmp_path / 'tree')!r})\n")
    assert (result.status, result.reason) == ("blocked", f"blocked: shutil.rmtree({str(tmp_path / 'tree')!r})")
    assert (tmp_path / "tree" / "leaf").is_dir()


def test_writing_outside_is_blocked(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = sandbox(f"open({str(victim)!r}, 'w').write('overwritten')\n")
    assert (result.status, result.reason) == ("blocked", f"blocked: open({str(victim)!r}, 'w')")
    assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import subprocess\nsubprocess.run(['echo', 'x'])\n", "blocked: subprocess.Popen('echo', ['echo', 'x'])"),
        ("import os\nos.system('echo x')\n", "blocked: os.system(b'echo x')"),
        ("import socket\nsocket.socket().connect(('127.0.0.1', 9))\n", "blocked: socket.connect(('127.0.0.1', 9))"),
        ("import os\nos.kill(os.getpid(), 9)\n", None),
        ("import ctypes\nctypes.CDLL(None).system(b'echo x')\n", None),
    ],
)
def test_processes_signals_network_and_ctypes_are_blocked(source: str, reason: str | None) -> None:
    result = sandbox(source)
    assert result.status == "blocked" and "x\n" not in result.stdout
    if reason is not None:
        assert result.reason == reason


def test_files_inside_the_sandbox_and_tempfile_are_allowed() -> None:
    source = (
        "import os, tempfile\nopen('out.txt', 'w').write('hi')\nassert open('out.txt').read() == 'hi'\n"
        "os.remove('out.txt')\nwith tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')\nprint('done')\n"
    )
    result = sandbox(source)
    assert (result.status, result.returncode, result.stdout, result.reason) == ("ok", 0, "done\n", "ok")


def test_the_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = sandbox(
        "import os\nassert 'OPENAI_API_KEY' not in os.environ\nassert 'sk-secret' not in str(os.environ)\n"
    )
    assert result.status == "ok"


# --- redaction ---


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-AbCdEf0123456789abcdef",
        "sk-0123456789abcdefghij",
        "sk-ant-api03-Xy_Z0123456789-ab",
        "ghp_0123456789abcdefghijABCDEFGHIJ",
        "hf_abcdefghijABCDEFGHIJ0123",
        "xoxb-0123456789-abcdef",
        "AKIAIOSFODNN7EXAMPLE",
        "0123456789abcdef0123456789abcdef",
        "dGhpcyBpcyBhIHNlY3JldCBrZXkgMTIzNA==",
    ],
)
def test_key_shaped_strings_are_redacted(secret: str) -> None:
    assert redact_secrets(f"KeyError: '{secret}' (line 3)", environ={}) == f"KeyError: '{REDACTED}' (line 3)"


def test_auth_headers_and_secret_variables_are_redacted() -> None:
    environ = {
        "MY_SERVICE_TOKEN": "plain words value",
        "DB_PASSWORD": "hunter22",
        "OPENAI_API_KEY": "short",
        "SOME_TOKEN": "1",
        "HOME": "/root",
    }
    text = "Authorization: Bearer abc.def-0123456789 failed for plain words value with hunter22 at /root (short)"
    assert redact_secrets(text, environ=environ) == (
        f"Authorization: Bearer {REDACTED} failed for {REDACTED} with {REDACTED} at /root (short)"
    )


@pytest.mark.parametrize(
    "reason",
    [
        "expected 42, got 41",
        "AssertionError: assert f(3) == 9",
        "timed out after 2.0 s",
        "NameError: name 'a_very_long_snake_case_function_name_v2' is not defined",
        "AttributeError: 'VeryLongCamelCaseClassNameWithoutDigitsInIt' object",
        "z" * 300,
        "blocked: open('/tmp/pytest-of-root/pytest-14/test_writing_outside_is_bloc0/keep.txt', 'w')",
    ],
)
def test_ordinary_reasons_are_kept(reason: str) -> None:
    assert redact_secrets(reason, environ={"OPENAI_API_KEY": "sk-not-in-these-reasons"}) == reason


# --- exact ---


@pytest.mark.parametrize(
    ("answer", "matched"),
    [
        ("saturday", "saturday"),
        ("**Saturday**.", "saturday"),
        ('"Saturday"', "saturday"),
        ("**The answer is: Saturday.**", "saturday"),
        ("Answer: **sat**", "sat"),
        ("Saturday\nBecause 10 days is a week and 3 days.", "saturday"),
        ("Count 10 days from Wednesday.\n\nSaturday  ", "saturday"),
    ],
)
def test_exact_accepts_formatting_and_explanations(answer: str, matched: str) -> None:
    result = judge(case({"kind": "exact", "answers": ["Saturday", "Sat"]}, "reasoning"), answer)
    assert (result.passed, result.reason, result.extracted) == (True, f"matched {matched!r}", matched)


@pytest.mark.parametrize("answer", ["The shortest person in this scenario is Cid.", "So it must be: cid"])
def test_exact_accepts_a_last_line_ending_with_the_answer(answer: str) -> None:
    result = judge(case({"kind": "exact", "answers": ["Cid"]}, "reasoning"), answer)
    assert (result.passed, result.reason) == (True, "ends with 'cid'")
    assert not judge(case({"kind": "exact", "answers": ["Cid"]}, "reasoning"), "Cid is not the shortest.").passed
    assert not judge(case({"kind": "exact", "answers": ["id"]}, "reasoning"), "It is Cid").passed


def test_exact_rejects_a_wrong_answer() -> None:
    exact = case({"kind": "exact", "answers": ["Saturday", "Sat"]}, "reasoning")
    result = judge(exact, "It is Saturday, I think.\nSunday")
    assert (result.passed, result.reason, result.extracted) == (
        False,
        "expected 'saturday' or 'sat', got 'sunday'",
        "sunday",
    )


# --- constraints ---

BULLETS = {
    "kind": "constraints",
    "line_count": 3,
    "format": "bullets",
    "required_words": ["salt"],
    "forbidden_words": ["ocean"],
    "max_words": 20,
}
GOOD_BULLETS = "- Salt on the wind.\n- Waves on the rocks.\n- Gulls over the bay."


def test_constraints_all_met() -> None:
    result = judge(case(BULLETS, "creative"), GOOD_BULLETS)
    assert (result.passed, result.reason) == (True, "all constraints met (12 words, 3 lines)")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (GOOD_BULLETS.replace("Salt", "Sand"), "missing required word 'salt'"),
        (GOOD_BULLETS.replace("bay", "ocean"), "forbidden word 'ocean' present"),
        (GOOD_BULLETS + "\n- Shells in the sand.", "4 lines, expected 3"),
        (GOOD_BULLETS.replace("- Waves", "Waves"), "not a bulleted list (line 2 has no '- ', '* ' or '• ')"),
        (GOOD_BULLETS.replace("rocks", "rocks and the long grey shore of my old home"), "21 words > max 20"),
        ("- Salty air.\n- Waves.\n- Gulls.", "missing required word 'salt'"),
    ],
)
def test_constraints_each_violated_alone(answer: str, reason: str) -> None:
    result = judge(case(BULLETS, "creative"), answer)
    assert (result.passed, result.reason) == (False, reason)


def test_constraints_list_every_violation_and_other_formats() -> None:
    result = judge(case(BULLETS, "creative"), "The ocean.")
    assert result.reason == (
        "missing required word 'salt'; forbidden word 'ocean' present; 1 line, expected 3; "
        "not a bulleted list (line 1 has no '- ', '* ' or '• ')"
    )
    short = judge(case({"kind": "constraints", "min_words": 5}, "creative"), "Too short.")
    assert (short.passed, short.reason) == (False, "2 words < min 5")
    numbered = case({"kind": "constraints", "format": "numbered"}, "creative")
    assert judge(numbered, "1. One\n2) Two").passed is True
    not_numbered = judge(numbered, "1. One\n- Two")
    assert not_numbered.reason == "not a numbered list (line 2 does not start with '1. ' or '1) ')"
    as_json = case({"kind": "constraints", "format": "json"}, "creative")
    assert judge(as_json, '```json\n{"name": "X"}\n```').passed is True
    assert judge(as_json, "{name: X}").reason.startswith("not valid JSON: ")


# --- battery ---


def test_builtin_battery_shape() -> None:
    assert Counter(c.category for c in BUILTIN_BATTERY) == {"math": 5, "coding": 5, "reasoning": 5, "creative": 5}
    assert len({c.id for c in BUILTIN_BATTERY}) == 20
    assert all(c.reference for c in BUILTIN_BATTERY)


@pytest.mark.parametrize("builtin", BUILTIN_BATTERY, ids=lambda c: c.id)
def test_builtin_references_pass(builtin: Case) -> None:
    result = judge(builtin, builtin.reference)
    assert result.passed, result.reason


def test_check_answer_from_worker_threads() -> None:
    coding = select_categories(BUILTIN_BATTERY, ["coding"])
    with ThreadPoolExecutor(max_workers=len(coding)) as pool:
        results = list(pool.map(lambda c: judge(c, c.reference), coding))
    assert [r.reason for r in results] == ["all tests passed"] * len(coding)


def test_select_categories() -> None:
    assert {c.category for c in select_categories(BUILTIN_BATTERY, ["math", "coding"])} == {"math", "coding"}
    assert len(select_categories(BUILTIN_BATTERY, [])) == 20
    with pytest.raises(BatteryError) as error:
        select_categories(BUILTIN_BATTERY, ["math", "poetry"])
    assert str(error.value) == "unknown categories: poetry (known: math, coding, reasoning, creative)"


CASES = [
    {"id": "a", "category": "math", "prompt": "1+1? Give only the number.", "check": {"kind": "math", "answer": 2}},
    {"id": "b", "category": "reasoning", "prompt": "Say yes.", "check": {"kind": "exact", "answers": ["yes"]}},
]


def test_load_good_jsonl_and_yaml(tmp_path: Path) -> None:
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps(CASES[0]) + "\n\n" + json.dumps(CASES[1]) + "\n")
    listed, mapped = tmp_path / "list.yaml", tmp_path / "map.yml"
    listed.write_text(json.dumps(CASES))
    mapped.write_text(json.dumps({"cases": CASES}))
    for path in (jsonl, listed, mapped):
        cases = load_battery(path)
        assert [c.id for c in cases] == ["a", "b"] and isinstance(cases[0].check, MathCheck)
        assert isinstance(cases[1].check, ExactCheck)


def test_load_bad_jsonl_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    bad = {**CASES[1], "id": "c", "check": {"kind": "math"}}
    path.write_text("\n".join(json.dumps(c) for c in [*CASES, bad]))
    with pytest.raises(BatteryError) as error:
        load_battery(path)
    assert str(error.value) == f"{path}: line 3: check.math.answer: Field required"
    path.write_text(json.dumps(CASES[0]) + "\n{not json\n")
    with pytest.raises(BatteryError, match=r": line 2: invalid JSON: "):
        load_battery(path)


def test_load_rejects_duplicates_unknown_suffix_unknown_category_and_empty(tmp_path: Path) -> None:
    duplicate = tmp_path / "d.yaml"
    duplicate.write_text(json.dumps([CASES[0], CASES[0]]))
    with pytest.raises(BatteryError) as error:
        load_battery(duplicate)
    assert str(error.value) == f"{duplicate}: case 2: duplicate case id 'a' (first at case 1)"
    with pytest.raises(BatteryError, match=r"unknown battery format '\.txt' \(expected \.jsonl, \.yaml or \.yml\)"):
        load_battery(tmp_path / "b.txt")
    unknown = tmp_path / "u.yaml"
    unknown.write_text(json.dumps([{**CASES[0], "category": "poetry"}]))
    with pytest.raises(BatteryError) as error:
        load_battery(unknown)
    assert str(error.value) == (
        f"{unknown}: case 1: category: Input should be 'math', 'coding', 'reasoning' or 'creative'"
    )
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(BatteryError, match=r": no cases$"):
        load_battery(empty)
    with pytest.raises(BatteryError, match=r": cannot read: "):
        load_battery(tmp_path / "missing.yaml")


def test_check_models_validate() -> None:
    with pytest.raises(ValueError, match="set at least one constraint"):
        ConstraintsCheck(kind="constraints")
    with pytest.raises(ValueError, match="min_words 5 > max_words 3"):
        ConstraintsCheck(kind="constraints", min_words=5, max_words=3)
    with pytest.raises(ValueError):
        CodeCheck(kind="code", entry_point="f", tests="assert f()", memory_mb=32)
