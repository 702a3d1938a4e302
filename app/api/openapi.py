"""The OpenAPI document, with the bounds this deployment's settings put on a request."""

from typing import Any

from fastapi import FastAPI

from app.core.settings import Settings


def document_limits(app: FastAPI, settings: Settings) -> None:
    """Make `/openapi.json` state the settings' maxima, which the static schema cannot know."""
    maxima = {
        "width": settings.max_side,
        "height": settings.max_side,
        "num_inference_steps": settings.max_steps,
        "num_images": settings.max_images,
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # caches itself in app.openapi_schema
            fields = schema["components"]["schemas"]["JobCreate"]["properties"]
            for name, maximum in maxima.items():
                for branch in fields[name].get("anyOf", [fields[name]]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = maximum
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
