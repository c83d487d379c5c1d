"""The ``synthd`` command line (Typer), one module per noun. User errors print one line and exit 1."""

import typer
from rich.markup import escape

# Modules, not their command functions: a name like ``synthd.cli.demo`` stays the module.
from synthd.cli import bench, chat, demo, eval, serve, warmup
from synthd.cli.common import CLIError, err
from synthd.cli.ft import files_app, ft_app
from synthd.cli.gpus import gpus_app
from synthd.cli.keys import keys_app
from synthd.cli.models import models_app

app = typer.Typer(
    help="synthd: a self-hostable LLM backend speaking the OpenAI API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.add_typer(files_app, name="files")
app.add_typer(ft_app, name="ft")
app.add_typer(gpus_app, name="gpus")
app.add_typer(keys_app, name="keys")
app.command()(serve.serve)
app.command()(chat.chat)
app.command()(bench.bench)
app.command()(warmup.warmup)
app.command("eval")(eval.eval_)
app.command()(demo.demo)


def main() -> None:
    """Entry point: run the Typer app; a ``CLIError`` from any command becomes one line on stderr, exit 1."""
    try:
        app()
    except CLIError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
