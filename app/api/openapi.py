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
            components = schema["components"]["schemas"]
            fields = components["JobCreate"]["properties"]
            # The OpenAI-compatible request names the image count `n`.
            bounded = [(fields[name], maximum) for name, maximum in maxima.items()]
            for openai_body in ("ImageGenerate", "ImageEdit"):
                n = components[openai_body]["properties"]["n"]
                bounded.append((n, settings.max_images))
            for field, maximum in bounded:
                for branch in field.get("anyOf", [field]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = maximum
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
