"""``synthd serve --chat-template``: a chat template an operator gives a served model (vLLM's flag),
used instead of the one in the model's tokenizer — for a base model that has none, say.

The template applies to chat on that model and on its fine-tunes that were not trained with one of
their own (``synthd.models.adapters.stored_chat_template``). Training always uses the model's own
template (or synthd's default, ``synthd.engine.prompts.DEFAULT_CHAT_TEMPLATE``) and stores it.
"""

import dataclasses
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from synthd.errors import InvalidRequest
from synthd.models.resolve import ModelSource, canonical_id


def read_chat_template(value: str) -> str:
    """The template ``value`` names, as vLLM reads ``--chat-template``: a file's text, or else the
    template itself written inline (it contains ``{{`` or ``{%``). Checked to be valid Jinja.

    Raises:
        InvalidRequest: neither a readable file nor a template, or Jinja cannot parse it.
    """
    if not value.strip():
        raise InvalidRequest("--chat-template: empty")
    path = Path(value).expanduser()
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError):  # a name the file system cannot hold (too long, a NUL): inline, then
        is_file = is_dir = False
    if is_dir:
        raise InvalidRequest(f"--chat-template {value}: is a directory, not a template file")
    text = None
    if is_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"--chat-template {value}: cannot be read ({exc})") from None
    if text is None:
        if "{{" not in value and "{%" not in value:
            raise InvalidRequest(f"--chat-template {value}: no such file, and not a Jinja template")
        text = value
    if not text.strip():
        raise InvalidRequest(f"--chat-template {value}: the template is empty")
    try:
        ImmutableSandboxedEnvironment(extensions=[jinja2.ext.loopcontrols]).parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidRequest(
            f"--chat-template {value}: not a valid Jinja template (line {exc.lineno}: {exc})"
        ) from None
    return text


def assign_chat_templates(served: list[ModelSource], specs: list[str]) -> list[ModelSource]:
    """``served`` with the templates of ``specs`` set: each spec is ``MODEL=TEMPLATE`` for one served
    model (its served id, or a shipped model's hub id), or a bare ``TEMPLATE`` when exactly one model is served.

    Raises:
        InvalidRequest: a spec names no served model, is bare beside several models, or gives one
            model two templates; or its template cannot be read (``read_chat_template``).
    """
    by_id = {source.model_id: source for source in served}
    templates: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if sep and canonical_id(name) in by_id:
            model_id = canonical_id(name)
        elif len(served) == 1:
            model_id, value = served[0].model_id, spec
        else:
            raise InvalidRequest(
                f"--chat-template {spec}: name the model it is for, as MODEL=PATH, one of {', '.join(by_id)}"
            )
        if model_id in templates:
            raise InvalidRequest(f"--chat-template: two templates for {model_id}")
        templates[model_id] = read_chat_template(value)
    return [dataclasses.replace(s, chat_template=templates.get(s.model_id)) for s in served]
