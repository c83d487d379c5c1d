"""Dependencies shared by routers (a router never imports another): the admin check of the
runtime-adapter routes, and reading an uploaded form file into memory."""

from fastapi import Request, UploadFile

from synthd.api.auth import CallerPrincipal
from synthd.errors import PayloadTooLarge, PermissionDenied


async def require_admin(principal: CallerPrincipal) -> None:
    """Let through admin keys (``synthd keys create --admin``), the server's own ``--api-key`` and
    every caller of a server without keys (auth off): those are the principals with ``is_admin``.

    Raises:
        PermissionDenied: a project key that is not an admin key (403 ``insufficient_permissions``).
    """
    if not principal.is_admin:
        raise PermissionDenied("Only an admin key may load or unload LoRA adapters.", code="insufficient_permissions")


async def read_upload(request: Request, file: UploadFile) -> bytes:
    """An already-parsed form file's bytes, read in 1 MiB chunks up to the app's ``max_file_bytes``
    (for routes that need the content in memory, e.g. the console's file check; ``/v1/files``
    streams to disk instead).

    Raises:
        PayloadTooLarge: over the limit (``file_too_large``).
    """
    limit = request.app.state.max_file_bytes
    content = bytearray()
    while chunk := await file.read(1 << 20):
        content += chunk
        if len(content) > limit:
            raise PayloadTooLarge(
                f"File is larger than the limit of {limit} bytes.", param="file", code="file_too_large"
            )
    return bytes(content)
