"""``synthd keys``: create, list and revoke API keys in this machine's ``SYNTHD_HOME`` (no server call:
a running server sees a new or revoked key at its next request)."""

import json
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from synthd.cli.common import console, fail

keys_app = typer.Typer(help="Create, list and revoke API keys (one project per key).", no_args_is_help=True)


def key_service():
    """The key service over ``SYNTHD_HOME``'s database (migrated first)."""
    from synthd.config import get_settings
    from synthd.services.keys import KeyService
    from synthd.store.db import open_database
    from synthd.store.keys import KeyStore

    settings = get_settings()
    return KeyService(KeyStore(open_database(settings.home, settings.database_url)))


def _when(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""


@keys_app.command("create")
def create(
    project: Annotated[str, typer.Option(help="Project the key's files, jobs and fine-tunes belong to.")],
    admin: Annotated[bool, typer.Option("--admin", help="See and manage every project's objects.")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (429 beyond); default unlimited.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (429 beyond); default unlimited.", min=1)] = None,
) -> None:
    """Create a key; its secret is printed once, on the last line (only a hash is stored).

    Example: synthd keys create --project research --rpm 60
    """
    from synthd.errors import SynthdError

    try:
        info, secret = key_service().create(project, admin=admin, rpm=rpm, tpm=tpm)
    except SynthdError as exc:
        fail(exc.message)
    limits = ", ".join(f"{name}={value}" for name, value in (("rpm", rpm), ("tpm", tpm)) if value) or "no rate limits"
    console.print(
        f"created {info.id} for project {info.project}{' (admin)' if admin else ''}, {limits}; "
        "store the key now, it is not shown again:",
        highlight=False,
    )
    print(secret)


@keys_app.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List keys (never their secrets: only the last four characters)."""
    keys = key_service().list()
    if as_json:
        print(json.dumps([asdict(k) for k in keys], indent=2))
        return
    table = Table("id", "project", "admin", "key", "rpm", "tpm", "created", "revoked")
    for key in keys:
        table.add_row(
            key.id,
            key.project,
            "yes" if key.is_admin else "",
            f"sk-synthd-…{key.hint}",
            str(key.rpm or ""),
            str(key.tpm or ""),
            _when(key.created_at),
            _when(key.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="Key id (key-…), from 'synthd keys list'.")]) -> None:
    """Revoke a key: requests with it are refused from now on.

    Example: synthd keys revoke key-0123456789abcdef01234567
    """
    from synthd.errors import SynthdError

    try:
        info = key_service().revoke(key_id)
    except SynthdError as exc:
        fail(exc.message)
    console.print(f"revoked {info.id} (project {info.project})", highlight=False)
