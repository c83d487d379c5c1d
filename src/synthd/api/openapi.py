"""The OpenAPI document as the server really behaves: bearer auth on every route but the public
ones, and no 422 (validation errors are answered 400 in OpenAI's envelope, see ``api.errors``)."""

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

BEARER = "bearerAuth"
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI, public_paths: frozenset[str]) -> None:
    """Replace ``app.openapi`` by a generator that declares ``Authorization: Bearer`` (omitted on
    ``public_paths``) and drops FastAPI's automatic 422 responses and their schemas."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if path in public_paths:
                    operation["security"] = []
        components = schema.setdefault("components", {})
        for name in FASTAPI_VALIDATION_SCHEMAS:
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `synthd keys create` or `--api-key`.",
            }
        }
        schema["security"] = [{BEARER: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
