"""A local server speaking the Hugging Face Hub's file API (what ``huggingface_hub`` calls for
``snapshot_download`` and ``hf_hub_download``), serving model folders from disk.

Routes: ``GET /api/models/{org}/{name}/revision/{revision}`` (the repo's commit and files),
``GET /api/models/{org}/{name}/tree/{revision}`` (the file listing), ``HEAD``/``GET
/{org}/{name}/resolve/{revision}/{path}`` (a file, with the ``X-Repo-Commit`` and ``ETag`` headers
the client caches by). Every file request is recorded in ``requested`` (``org/name/path``).
"""

import hashlib
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def create_app(repos: dict[str, Path], requested: list[str], refused: frozenset[str] = frozenset()) -> FastAPI:
    """An app serving ``repos`` (``org/name`` → folder) at one commit each (the sha1 of the id);
    the repos in ``refused`` answer every call 401 (a bad ``HF_TOKEN``)."""
    app = FastAPI()
    commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}

    @app.middleware("http")
    async def unauthorized(request: Request, call_next):
        if any(f"/{repo}/" in request.url.path for repo in refused):
            return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
        return await call_next(request)

    def missing(repo: str) -> JSONResponse:
        return JSONResponse(
            {"error": "Repository not found"}, status_code=404, headers={"X-Error-Code": "RepoNotFound"}
        )

    def files(repo: str) -> list[Path]:
        return sorted(p for p in repos[repo].rglob("*") if p.is_file())

    @app.get("/api/models/{org}/{name}/revision/{revision:path}")
    async def repo_info(org: str, name: str, revision: str) -> Response:
        repo = f"{org}/{name}"
        if repo not in repos:
            return missing(repo)
        siblings = [{"rfilename": str(p.relative_to(repos[repo]))} for p in files(repo)]
        return JSONResponse({"id": repo, "modelId": repo, "sha": commits[repo], "siblings": siblings})

    @app.get("/api/models/{org}/{name}/tree/{revision:path}")
    async def tree(org: str, name: str, revision: str) -> Response:
        repo = f"{org}/{name}"
        if repo not in repos:
            return missing(repo)
        return JSONResponse(
            [
                {"type": "file", "oid": _sha1(p), "size": p.stat().st_size, "path": str(p.relative_to(repos[repo]))}
                for p in files(repo)
            ]
        )

    @app.api_route("/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve(org: str, name: str, revision: str, path: str, request: Request) -> Response:
        repo = f"{org}/{name}"
        if repo not in repos:
            return missing(repo)
        file = repos[repo] / path
        if not file.is_file():
            return JSONResponse(
                {"error": "Entry not found"}, status_code=404, headers={"X-Error-Code": "EntryNotFound"}
            )
        if request.method == "GET":
            requested.append(f"{repo}/{path}")
        headers = {"X-Repo-Commit": commits[repo], "ETag": f'"{_sha1(file)}"'}
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(file.stat().st_size)})
        return FileResponse(file, headers=headers)

    return app
