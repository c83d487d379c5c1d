"""vLLM's runtime LoRA routes: ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

As in vLLM, success is answered ``200`` with a plain-text sentence; failures use the one error
envelope (400 for a bad name, path or adapter, 403 for a key that is not an admin key, 404 for an
unknown adapter on unload).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from synthd.api.dependencies import require_admin
from synthd.api.errors import COMMON_ERRORS, error_responses
from synthd.protocol.lora import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from synthd.services.lora_adapters import LoRAAdapterService

router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_admin)], responses={**COMMON_ERRORS, **error_responses(403)}
)
SENTENCE = {
    200: {
        "description": "vLLM's plain-text sentence saying what was done.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def get_adapters(request: Request) -> LoRAAdapterService:
    """The app's ``LoRAAdapterService``."""
    return request.app.state.lora_adapters


Adapters = Annotated[LoRAAdapterService, Depends(get_adapters)]


@router.post("/load_lora_adapter", responses=SENTENCE)
async def load_lora_adapter(body: LoadLoRAAdapterRequest, adapters: Adapters) -> PlainTextResponse:
    """Validate a PEFT LoRA folder on the server and serve it under ``lora_name``."""
    return PlainTextResponse(await adapters.load(body.lora_name, body.lora_path, body.load_inplace))


@router.post("/unload_lora_adapter", responses={**SENTENCE, **error_responses(404)})
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, adapters: Adapters) -> PlainTextResponse:
    """Stop serving a runtime adapter; requests already running on it finish."""
    return PlainTextResponse(await adapters.unload(body.lora_name))
