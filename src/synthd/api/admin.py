"""The dependency of routes only administrators may call (loading and unloading runtime adapters)."""

from synthd.api.auth import CallerPrincipal
from synthd.errors import PermissionDenied


async def require_admin(principal: CallerPrincipal) -> None:
    """Let through admin keys (``synthd keys create --admin``), the server's own ``--api-key`` and
    every caller of a server without keys (auth off): those are the principals with ``is_admin``.

    Raises:
        PermissionDenied: a project key that is not an admin key (403 ``insufficient_permissions``).
    """
    if not principal.is_admin:
        raise PermissionDenied("Only an admin key may load or unload LoRA adapters.", code="insufficient_permissions")
