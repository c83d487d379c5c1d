"""MkDocs hooks: the reference pages and the benchmark page, generated at build time, never retyped.

A page asks for generated text with a marker comment, replaced in ``on_page_markdown``:

- ``<!-- synthd:http-api -->``: every route of the FastAPI app's OpenAPI schema, then its schemas;
- ``<!-- synthd:cli -->``: every command of the Typer app, by Typer's own doc generator;
- ``<!-- synthd:configuration -->``: every field of ``synthd.config.Settings`` (the build fails on a
  field without a description, so the rule "every setting says what it means" is enforced here);
- ``<!-- synthd:native-architectures -->``: the architectures the native engine runs
  (``synthd.engine.native.support.NATIVE_ARCHITECTURES``), one bullet each;
- ``<!-- synthd:benchmark ID -->``: the result ``benchmarks/results/ID.json`` as context, table,
  ratios, findings, caveats and a plot (SVG, drawn with matplotlib in ``on_files``).

An unknown marker fails the build, as does a result file without its context (machine, date, command).
"""

import io
import json
import re
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*synthd:([a-z-]+)(?:\s+([\w-]+))?\s*-->")
RESULT_CONTEXT = ("title", "date", "machine", "command", "columns", "rows")
PLOT_DIR = "benchmarks"
_HOME = tempfile.TemporaryDirectory(prefix="synthd-docs-")
"""The throw-away ``SYNTHD_HOME`` of the app the HTTP reference is read from (removed at exit)."""


def build_openapi_app() -> Any:
    """The FastAPI app whose schema the HTTP reference shows, built without loading a model or an
    engine: no served models, a throw-away ``SYNTHD_HOME`` (its SQLite database holds nothing), and
    the lifespan (warmups, scheduler) never started. The app is composed by ``synthd.bootstrap``; this is the one call into it.
    """
    from synthd.bootstrap import build_app
    from synthd.config import Settings

    settings = Settings(home=Path(_HOME.name), database_url=None, ray_address=None, gpu_pool_file=None, models_dir=None)
    return build_app(settings, [], "native")


# ---- HTTP API ---------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """``text`` fit for one Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _schema_type(schema: dict) -> str:
    """A short Markdown rendering of a JSON schema's type; ``$ref`` links to the schema's section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#schema-{name.lower()})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " \\| ".join(_schema_type(s) for s in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_schema_type(schema['additionalProperties'])}"
    return f"`{kind}`" if kind else "any"


def _body_schemas(content: dict) -> str:
    """The media types of a request or response body, each with its schema."""
    parts = []
    for media, body in content.items():
        schema = body.get("schema")
        parts.append(f"`{media}`" + (f": {_schema_type(schema)}" if schema else ""))
    return "; ".join(parts)


def _operation(path: str, method: str, op: dict, common: set[str]) -> list[str]:
    """One route's section: summary, description, auth, parameters, body, and the responses not in
    ``common`` (the ones every route answers, listed once at the top)."""
    lines = [f"### `{method.upper()} {path}`", "", f"**{op.get('summary', '')}.**"]
    if op.get("description"):
        lines += ["", op["description"]]
    lines += ["", "Authentication: none (public)." if op.get("security") == [] else "Authentication: bearer key."]
    if params := op.get("parameters"):
        lines += ["", "| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            lines.append(
                f"| `{p['name']}` | {p['in']} | {_schema_type(p.get('schema', {}))} | "
                f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description'))} |"
            )
    if body := op.get("requestBody"):
        lines += ["", f"Request body: {_body_schemas(body.get('content', {}))}."]
    if also := sorted(status for status in op.get("responses", {}) if status in common):
        lines += ["", f"Also answers {', '.join(also)} (see the top of this page)."]
    lines += ["", "| status | meaning | body |", "|---|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        if status in common:
            continue
        lines.append(
            f"| {status} | {_cell(response.get('description'))} | {_body_schemas(response.get('content', {}))} |"
        )
    return lines + [""]


def _component(name: str, schema: dict) -> list[str]:
    """One schema's section: its description and a table of its properties."""
    lines = [f"### {name} {{#schema-{name.lower()}}}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    properties = schema.get("properties")
    if not properties:
        return lines + [f"Type: {_schema_type(schema)}.", ""]
    required = set(schema.get("required", ()))
    lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for field, spec in properties.items():
        default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
        lines.append(
            f"| `{field}` | {_schema_type(spec)} | {'yes' if field in required else 'no'} | {_cell(default)} | "
            f"{_cell(spec.get('description'))} |"
        )
    return lines + [""]


def _group(path: str) -> str:
    """The section a route belongs to: its first path segment after ``/v1``."""
    segments = [s for s in path.split("/") if s]
    segment = segments[1] if segments[0] == "v1" and len(segments) > 1 else segments[0]
    return segment.replace("_", " ").capitalize()


@cache
def http_api() -> str:
    """The HTTP reference: every route of ``app.openapi()`` by group, then every schema."""
    schema = build_openapi_app().openapi()
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    answers = Counter(
        (status, json.dumps(response, sort_keys=True))
        for op in operations
        for status, response in op.get("responses", {}).items()
        if not status.startswith("2")
    )
    shared = {answer for answer, count in answers.items() if count > len(operations) / 2}
    common = {status for status, _ in shared}
    lines = [
        f"Generated from the OpenAPI schema of synthd {schema['info']['version']} ({len(schema['paths'])} paths).",
        "",
        "Errors most routes answer, listed here once (each route says which of them it has):",
        "",
        "| status | meaning | body |",
        "|---|---|---|",
    ]
    for status, response in sorted((s, json.loads(r)) for s, r in shared):
        lines.append(
            f"| {status} | {_cell(response.get('description'))} | {_body_schemas(response.get('content', {}))} |"
        )
    current = None
    for path, operations in schema["paths"].items():
        if (group := _group(path)) != current:
            lines += ["", f"## {group}", ""]
            current = group
        for method, op in operations.items():
            lines += _operation(path, method, op, common)
    lines += ["## Schemas", ""]
    for name, component in sorted(schema.get("components", {}).get("schemas", {}).items()):
        lines += _component(name, component)
    return "\n".join(lines)


# ---- CLI --------------------------------------------------------------------------------------


@cache
def cli() -> str:
    """The CLI reference: Typer's own Markdown for ``synthd`` and every subcommand, headings one
    level down so that the page keeps its own title, and the user's home as ``~`` in defaults."""
    import typer
    import typer.cli
    from typer.models import Context

    from synthd.cli import app

    command = typer.main.get_command(app)
    text = typer.cli.get_docs_for_click(obj=command, ctx=Context(command, info_name="synthd"), name="synthd")
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE).replace(str(Path.home()), "~")


# ---- Configuration ----------------------------------------------------------------------------


def _env_names(name: str, field: Any, prefix: str) -> list[str]:
    """The environment variables that set a field: its aliases when it has any (pydantic-settings
    then ignores the prefix), else the prefix plus its name, upper-cased."""
    alias = field.validation_alias or field.alias
    if alias is None:
        return [f"{prefix}{name}".upper()]
    choices = getattr(alias, "choices", [alias])
    return [str(c).upper() for c in choices if isinstance(c, str)]


def _type_name(annotation: Any) -> str:
    """``int | None`` rather than ``typing.Optional[int]``."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(typing|pathlib|collections\.abc)\.", "", text)


def _default(field: Any) -> str:
    """The field's default as the docs show it: the user's home as ``~``; unset as ``unset``."""
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    text = str(value).replace(str(Path.home()), "~")
    return f"`{text}`"


BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


def _bounds(field: Any) -> str:
    """The field's numeric bounds (``Field(ge=1)`` → ``≥ 1``), from its annotated-types metadata."""
    return ", ".join(
        f"{sign} {getattr(item, attr)}" for item in field.metadata for attr, sign in BOUNDS if hasattr(item, attr)
    )


@cache
def configuration() -> str:
    """The configuration reference: one row per ``Settings`` field (variable, type, default, meaning).

    Raises:
        ValueError: a field has no description.
    """
    from synthd.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    if missing:
        raise ValueError(f"synthd.config.Settings fields without a description: {', '.join(missing)}")
    lines = ["| variable | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        names = "<br>".join(f"`{n}`" for n in _env_names(name, field, prefix))
        lines.append(
            f"| {names} | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | "
            f"{_bounds(field)} | {_cell(field.description)} |"
        )
    return "\n".join(lines)


# ---- Benchmarks -------------------------------------------------------------------------------


def _result(result_id: str) -> dict:
    """``benchmarks/results/<id>.json``, checked to carry its context.

    Raises:
        ValueError: a context key (title, date, machine, command, columns, rows) is missing.
    """
    data = json.loads((RESULTS / f"{result_id}.json").read_text())
    if missing := [key for key in RESULT_CONTEXT if key not in data]:
        raise ValueError(f"benchmarks/results/{result_id}.json lacks {', '.join(missing)}")
    return data


def _value(row: dict, column: dict) -> str:
    """A table cell: the measured value, or for a ``ratio_of`` column the ratio of two measured
    values (so that a ratio is never typed beside the numbers it comes from); absent ones blank."""
    if "ratio_of" in column:
        numerator, denominator = (row.get(key) for key in column["ratio_of"])
        return f"{numerator / denominator:.2f}" if numerator is not None and denominator else ""
    value = row.get(column["key"])
    return "" if value is None else _cell(value)


def _rows(data: dict) -> list[dict]:
    """The result's rows with every ``ratio_of`` column computed, for plots."""
    derived = [c for c in data["columns"] if "ratio_of" in c]
    return [{**row, **{c["key"]: float(v) for c in derived if (v := _value(row, c))}} for row in data["rows"]]


def _ratios(data: dict) -> list[str]:
    """Ratios of each server to the baseline at the same load, for the metrics ``ratios`` names."""
    spec = data["ratios"]
    by, baseline, metrics = spec["by"], spec["baseline"], spec["metrics"]
    base = {row[by]: row for row in data["rows"] if row[spec["series"]] == baseline}
    labels = {c["key"]: c["label"] for c in data["columns"]}
    lines = [f"| {spec['series']} | {by} | " + " | ".join(f"{labels[m]} ×" for m in metrics) + " |"]
    lines.append("|---|---|" + "---:|" * len(metrics))
    for row in data["rows"]:
        if row[spec["series"]] == baseline or row[by] not in base:
            continue
        cells = [f"{row[m] / base[row[by]][m]:.2f}" if row.get(m) and base[row[by]].get(m) else "" for m in metrics]
        lines.append(f"| {row[spec['series']]} / {baseline} | {row[by]} | " + " | ".join(cells) + " |")
    return lines


def benchmark(result_id: str) -> str:
    """One result: its context, table, ratios (when asked), findings, caveats and plots."""
    data = _result(result_id)
    columns = data["columns"]
    lines = [
        f"**{data['title']}**",
        "",
        f"- When: {data['date']}",
        f"- Machine: {data['machine']}",
        f"- Command: `{data['command']}`",
        *([f"- Setup: {data['setup']}"] if data.get("setup") else []),
        "",
        "| " + " | ".join(c["label"] for c in columns) + " |",
        "|" + "|".join("---:" if c.get("numeric") else "---" for c in columns) + "|",
    ]
    for row in data["rows"]:
        lines.append("| " + " | ".join(_value(row, c) for c in columns) + " |")
    if "ratios" in data:
        lines += ["", "Ratios of the medians above:", "", *_ratios(data)]
    for i, plot in enumerate(data.get("plots", ())):
        lines += ["", f"![{plot['title']}]({result_id}-{i}.svg)"]
    if findings := data.get("findings"):
        lines += ["", "Findings:", "", *(f"- {f}" for f in findings)]
    if caveats := data.get("caveats"):
        lines += ["", '!!! warning "Caveats"', "", *(f"    - {c}" for c in caveats)]
    return "\n".join(lines)


def _plot(data: dict, plot: dict) -> bytes:
    """A grouped bar chart as SVG: one group per ``plot['x']`` value and one bar per
    ``plot['series']`` value, or, when ``plot['y']`` is a list of columns, one bar per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(data)
    labels = {c["key"]: c["label"] for c in data["columns"]}
    xs = list(dict.fromkeys(row[plot["x"]] for row in rows))
    if isinstance(plot["y"], list):
        bars = [(labels[y], y, lambda row: True) for y in plot["y"]]
    elif plot.get("series"):
        names = dict.fromkeys(row[plot["series"]] for row in rows)
        bars = [(name, plot["y"], lambda row, name=name: row[plot["series"]] == name) for name in names]
    else:
        bars = [(None, plot["y"], lambda row: True)]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (label, y, keep) in enumerate(bars):
        values = {row[plot["x"]]: row.get(y) for row in rows if keep(row)}
        offsets = [x + (i - (len(bars) - 1) / 2) * width for x in range(len(xs))]
        ax.bar(offsets, [values.get(x) or 0 for x in xs], width, label=label)
    if "target" in plot:
        ax.axhline(plot["target"], color="black", linestyle="--", linewidth=1, label=f"target {plot['target']}")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=8)
    ax.set_ylabel(plot["ylabel"])
    ax.set_title(plot["title"], fontsize=10)
    if len(bars) > 1 or "target" in plot:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue()


def on_files(files: Files, config: Any) -> Files:
    """Add one SVG per plot of every benchmark result, beside the benchmarks page."""
    for path in sorted(RESULTS.glob("*.json")):
        data = _result(path.stem)
        for i, plot in enumerate(data.get("plots", ())):
            files.append(File.generated(config, f"{PLOT_DIR}/{path.stem}-{i}.svg", content=_plot(data, plot)))
    return files


# ---- Markers ----------------------------------------------------------------------------------


def native_architectures() -> str:
    """The native engine's architectures as a bullet list, from the constant the loader checks."""
    from synthd.engine.native.support import NATIVE_ARCHITECTURES

    return "\n".join(f"- `{name}`" for name in NATIVE_ARCHITECTURES)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace each ``<!-- synthd:... -->`` marker by the text it asks for.

    Raises:
        ValueError: an unknown marker.
    """

    def expand(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "http-api":
            return http_api()
        if kind == "cli":
            return cli()
        if kind == "configuration":
            return configuration()
        if kind == "native-architectures":
            return native_architectures()
        if kind == "benchmark" and arg:
            return benchmark(arg)
        raise ValueError(f"{page.file.src_path}: unknown marker {match.group(0)}")

    return MARKER.sub(expand, markdown)
