"""Judge a model's answer to a case: math, code, exact and constraints checkers.

Every checker returns a :class:`CheckResult` and never raises for anything in the answer. All
are pure functions of their inputs (code runs in a child process through
:func:`synthd.evals.sandbox.run_sandboxed`), so ``check_answer`` is safe to call from worker
threads.
"""

import ast
import json
import math
import re
import textwrap
from dataclasses import dataclass

from synthd.evals.battery import Case, CodeCheck, ConstraintsCheck, ExactCheck, MathCheck
from synthd.evals.sandbox import run_sandboxed


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A verdict: ``passed``; ``reason``, one line saying what matched or why it failed; and
    ``extracted``, what the checker took from the answer (the number, the code, the matching
    line), ``None`` where it judges the whole answer or found nothing."""

    passed: bool
    reason: str
    extracted: str | None = None


def check_answer(case: Case, answer: str, *, unsafe_sandbox: bool = False) -> CheckResult:
    """Judge ``answer`` (the model's reply text) against ``case.check``; ``unsafe_sandbox`` lets
    code run under the audit-hook guard alone where bubblewrap cannot run (see ``check_code``)."""
    check = case.check
    if isinstance(check, MathCheck):
        return check_math(check, answer)
    if isinstance(check, CodeCheck):
        return check_code(check, answer, unsafe_sandbox=unsafe_sandbox)
    if isinstance(check, ExactCheck):
        return check_exact(check, answer)
    return check_constraints(check, answer)


# --- math ---

_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)\]])[-−])?"
    r"(?P<whole>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<denominator>\d+(?:\.\d+)?))?"
)
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"\banswer\b[*_\s]*(?:is\b|:|=)", re.IGNORECASE)
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")


def check_math(check: MathCheck, answer: str) -> CheckResult:
    """Pass when the answer's final number is ``math.isclose`` to ``check.answer``.

    The number is the first one inside the last ``\\boxed{...}``, else the first one after the
    last "answer is"/"answer:", else the last one in the text. Thousands separators (``1,234``),
    signs, decimals and fractions (``3/4``, ``\\frac{3}{4}``) are understood; a percent sign is
    ignored.
    """
    found = extract_number(answer)
    if found is None:
        return CheckResult(passed=False, reason="no number in the answer")
    expected = _format_number(check.answer)
    got = _format_number(found)
    if math.isclose(found, check.answer, rel_tol=check.rel_tol, abs_tol=check.abs_tol):
        return CheckResult(passed=True, reason=f"got {got}, as expected", extracted=got)
    return CheckResult(passed=False, reason=f"expected {expected}, got {got}", extracted=got)


def extract_number(answer: str) -> float | None:
    """The final number of an answer (see :func:`check_math`), or ``None`` when there is none."""
    text = _LATEX_FRACTION.sub(r"\1/\2", answer.replace("{,}", ","))
    boxed = _last_boxed(text)
    if boxed is not None:
        numbers = _numbers(boxed)
        if numbers:
            return numbers[0]
    announced = list(_ANSWER_IS.finditer(text))
    if announced:
        rest = text[announced[-1].end() :].split("\n", 1)[0]
        numbers = _numbers(rest)
        if numbers:
            return numbers[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def _last_boxed(text: str) -> str | None:
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    depth, start = 1, starts[-1].end()
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return text[start:]


def _numbers(text: str) -> list[float]:
    values = []
    for match in _NUMBER.finditer(text):
        value = float(match["whole"].replace(",", ""))
        if match["denominator"] is not None:
            denominator = float(match["denominator"])
            if denominator == 0:
                continue
            value /= denominator
        values.append(-value if match["sign"] else value)
    return values


def _format_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# --- code ---

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


def check_code(check: CodeCheck, answer: str, *, unsafe_sandbox: bool = False) -> CheckResult:
    """Pass when the answer's code followed by ``check.tests`` runs to the end in the sandbox.

    The sandbox is bubblewrap plus an audit-hook guard (:mod:`synthd.evals.sandbox`); where
    bubblewrap cannot run, the code is not run and the check fails saying so, unless
    ``unsafe_sandbox``, which runs it under the guard alone.

    The code is the last ```` ```python ```` block (``py``/``python3`` too), else the last
    untagged fenced block, else the whole answer if it contains ``def <entry_point>``. A syntax
    error, or no top-level definition of ``entry_point``, fails without running anything.
    Top-level ``if __name__ == "__main__":`` blocks are dropped before running.
    """
    code = extract_code(answer, check.entry_point)
    missing = f"no function named {check.entry_point} in the answer"
    if code is None:
        return CheckResult(passed=False, reason=missing)
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return CheckResult(passed=False, reason=f"SyntaxError: {exc.msg} (line {exc.lineno})", extracted=code)
    if check.entry_point not in _top_level_names(tree):
        return CheckResult(passed=False, reason=missing, extracted=code)
    program = f"{_without_main_blocks(code, tree)}\n\n{check.tests}"
    result = run_sandboxed(program, timeout_s=check.timeout_s, memory_mb=check.memory_mb, unsafe_sandbox=unsafe_sandbox)
    if result.status == "ok":
        return CheckResult(passed=True, reason="all tests passed", extracted=code)
    return CheckResult(passed=False, reason=result.reason, extracted=code)


def extract_code(answer: str, entry_point: str) -> str | None:
    """The code of an answer (see :func:`check_code`), or ``None`` when there is none."""
    blocks = [(match[1].lower(), textwrap.dedent(match[2])) for match in _FENCE.finditer(answer)]
    python = [body for language, body in blocks if language in ("python", "py", "python3")]
    untagged = [body for language, body in blocks if not language]
    if python:
        return python[-1]
    if untagged:
        return untagged[-1]
    if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", answer):
        return answer
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
    return names


def _without_main_blocks(code: str, tree: ast.Module) -> str:
    """``code`` less its top-level ``if __name__ == "__main__":`` blocks: models put demos there
    that read stdin or call ``sys.exit``, which would fail or skip the tests."""
    drop: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    if not drop:
        return code
    return "\n".join(line for number, line in enumerate(code.splitlines(), start=1) if number not in drop)


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(side, ast.Name) and side.id == "__name__" for side in sides) and any(
        isinstance(side, ast.Constant) and side.value == "__main__" for side in sides
    )


# --- exact ---

_EDGE_CHARS = " \t\"'`*_.,;:!?()[]{}“”‘’«»$"
_LEADING_ANSWER = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:)\s*")


def check_exact(check: ExactCheck, answer: str) -> CheckResult:
    """Pass when the normalised answer, or its first or last non-empty line, equals a normalised
    accepted answer (see :func:`normalise`), or the last line ends with one as whole words ("The
    shortest is Cid." for ``Cid``); the lines allow an explanation before or after."""
    accepted = {normalise(a) for a in check.answers}
    lines = [line for line in answer.splitlines() if line.strip()]
    candidates = [answer] + ([lines[0], lines[-1]] if lines else [])
    for candidate in candidates:
        text = normalise(candidate)
        if text in accepted:
            return CheckResult(passed=True, reason=f"matched {text!r}", extracted=text)
    last = normalise(lines[-1]) if lines else ""
    for expected in accepted:
        if expected and re.search(rf"(?:^|\W){re.escape(expected)}$", last):
            return CheckResult(passed=True, reason=f"ends with {expected!r}", extracted=expected)
    got = normalise(lines[-1]) if lines else ""
    expected = " or ".join(repr(normalise(a)) for a in check.answers)
    shown = got if len(got) <= 80 else got[:77] + "..."
    return CheckResult(passed=False, reason=f"expected {expected}, got {shown!r}", extracted=got or None)


def normalise(text: str) -> str:
    """Casefold, drop markdown bold, surrounding punctuation and quotes, a leading "the answer is"
    or "answer:", and collapse whitespace: ``'**The answer is: Paris.**'`` → ``'paris'``."""
    text = " ".join(text.casefold().replace("**", "").replace("__", "").split()).strip(_EDGE_CHARS)
    return _LEADING_ANSWER.sub("", text).strip(_EDGE_CHARS)


# --- constraints ---

_WORD = re.compile(r"\b[\w'-]+\b")
_JSON_FENCE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.IGNORECASE)
_NUMBERED = re.compile(r"^\d+[.)] ")


def check_constraints(check: ConstraintsCheck, answer: str) -> CheckResult:
    """Pass when every constraint set on ``check`` holds; the reason lists each one violated.

    Words match ``\\b[\\w'-]+\\b``; required and forbidden words match case-insensitively as whole
    words; lines are the non-empty ones. ``bullets``: every line starts with ``- ``, ``* `` or
    ``• ``; ``numbered``: with ``1. `` or ``1) ``; ``json``: the answer, less a ```` ```json ````
    fence, parses as JSON.
    """
    words = len(_WORD.findall(answer))
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    problems = []
    if check.min_words is not None and words < check.min_words:
        problems.append(f"{_count(words, 'word')} < min {check.min_words}")
    if check.max_words is not None and words > check.max_words:
        problems.append(f"{_count(words, 'word')} > max {check.max_words}")
    problems += [f"missing required word {w!r}" for w in check.required_words if not _has_word(answer, w)]
    problems += [f"forbidden word {w!r} present" for w in check.forbidden_words if _has_word(answer, w)]
    if check.line_count is not None and len(lines) != check.line_count:
        problems.append(f"{_count(len(lines), 'line')}, expected {check.line_count}")
    problems += _format_problems(check.format, answer, lines)
    if problems:
        return CheckResult(passed=False, reason="; ".join(problems))
    return CheckResult(
        passed=True, reason=f"all constraints met ({_count(words, 'word')}, {_count(len(lines), 'line')})"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _format_problems(form: str, answer: str, lines: list[str]) -> list[str]:
    if form == "bullets":
        bad = [n for n, line in enumerate(lines, start=1) if not line.startswith(("- ", "* ", "• "))]
        if not lines or bad:
            return [f"not a bulleted list (line {bad[0] if bad else 1} has no '- ', '* ' or '• ')"]
    elif form == "numbered":
        bad = [n for n, line in enumerate(lines, start=1) if not _NUMBERED.match(line)]
        if not lines or bad:
            return [f"not a numbered list (line {bad[0] if bad else 1} does not start with '1. ' or '1) ')"]
    elif form == "json":
        text = answer.strip()
        fenced = _JSON_FENCE.match(text)
        try:
            json.loads(fenced[1] if fenced else text)
        except json.JSONDecodeError as exc:
            return [f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]
    return []
