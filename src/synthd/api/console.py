"""The console: HTML pages at ``/`` rendered from ``synthd/console/templates``, their static files at
``/static``, and one helper route, ``POST /console/validate-file``.

The pages are shells: the browser fetches everything from the public JSON API (``/v1/...``,
``/warmup/...``) with the user's key, so the console never sees more than the key allows. Pages
themselves carry no data and need no key (``PUBLIC_PAGES``, which the auth middleware lets through).
"""

import asyncio
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from synthd import __version__
from synthd.api.dependencies import read_upload
from synthd.api.errors import COMMON_ERRORS
from synthd.training.data import DataFormatError, load_jsonl

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
PUBLIC_PAGES = re.compile(r"/(models|playground|fine-tuning(/[^/]+)?|batches|gpus|static/.+)?")
"""The pages and their static files (full match of the path), served without a key."""

templates = Jinja2Templates(directory=CONSOLE_DIR / "templates")
router = APIRouter()
router.mount("/static", StaticFiles(directory=CONSOLE_DIR / "static"), name="console_static")


def render(request: Request, template: str, title: str, **context: str) -> HTMLResponse:
    """A console page; ``root`` is the app's mount point so links work behind a path prefix."""
    return templates.TemplateResponse(
        request,
        template,
        {"title": title, "root": request.scope.get("root_path", ""), "version": __version__, **context},
    )


@router.get("/", response_class=RedirectResponse, include_in_schema=False)
async def home(request: Request) -> RedirectResponse:
    """The console opens on the models page."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/models", status_code=307)


@router.get("/models", response_class=HTMLResponse, include_in_schema=False)
async def models_page(request: Request) -> HTMLResponse:
    """Base and fine-tuned models: status, placement, traffic; warm up and delete."""
    return render(request, "models.html", "Models")


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground_page(request: Request) -> HTMLResponse:
    """Chat with one or two models side by side."""
    return render(request, "playground.html", "Playground")


@router.get("/fine-tuning", response_class=HTMLResponse, include_in_schema=False)
async def jobs_page(request: Request) -> HTMLResponse:
    """Fine-tuning jobs and the form that starts one."""
    return render(request, "jobs.html", "Fine-tuning")


@router.get("/batches", response_class=HTMLResponse, include_in_schema=False)
async def batches_page(request: Request) -> HTMLResponse:
    """Batches: status, progress, result files; cancel."""
    return render(request, "batches.html", "Batches")


@router.get("/gpus", response_class=HTMLResponse, include_in_schema=False)
async def gpus_page(request: Request) -> HTMLResponse:
    """The GPU inventory and the "will it fit?" form."""
    return render(request, "gpus.html", "GPUs")


@router.get("/fine-tuning/{job_id}", response_class=HTMLResponse, include_in_schema=False)
async def job_page(request: Request, job_id: str) -> HTMLResponse:
    """One job: status, loss curves, events, checkpoints."""
    return render(request, "job.html", "Fine-tuning job", job_id=job_id)


class FileCheck(BaseModel):
    """Answer of ``POST /console/validate-file``: the problems ``load_jsonl`` finds, each naming its
    line (``"line 3: invalid JSON (...)"``, at most five), or the number of examples when valid."""

    valid: bool
    method: Literal["supervised", "dpo"]
    examples: int | None = None
    problems: list[str] = []


@router.post("/console/validate-file", response_model=FileCheck, responses=COMMON_ERRORS)
async def validate_file(
    request: Request, file: Annotated[UploadFile, File()], method: Annotated[Literal["supervised", "dpo"], Form()]
) -> FileCheck:
    """Check a fine-tuning JSONL file as a job would (``synthd.training.data.load_jsonl``), without
    storing it, so the console can show problems before it uploads the file and creates the job.

    Raises:
        PayloadTooLarge: over ``SYNTHD_MAX_FILE_BYTES`` (413); Unauthenticated: without the server's key (401).
    """
    content = await read_upload(request, file)
    try:
        dataset = await asyncio.to_thread(load_jsonl, content, method)  # parsing a large file: off the loop
    except DataFormatError as exc:
        return FileCheck(valid=False, method=method, problems=str(exc).split("; "))
    return FileCheck(valid=True, method=method, examples=len(dataset.rows))
