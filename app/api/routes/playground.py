"""`GET /`: the playground, one static page that drives the API from a browser."""

import base64
import hashlib
import logging
import re
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import ServicesDep
from app.core.storage import Storage

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

# Read once, with the package (works from a wheel or a zip too), never per request.
PAGE = resources.files("app.api").joinpath("static/playground.html").read_text("utf-8")


def _inline_hash(tag: str) -> str:
    """The CSP source of the page's one inline `<tag>`: its SHA-256, so nothing else runs."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, re.DOTALL)
    if len(blocks) != 1:
        raise RuntimeError(f"playground.html must have exactly one inline <{tag}>")
    digest = hashlib.sha256(blocks[0].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


SCRIPT_SRC = _inline_hash("script")
STYLE_SRC = _inline_hash("style")


def storage_origin(storage: Storage) -> str | None:
    """Where images redirect to (the origin of a presigned URL), or None if we serve them."""
    try:
        url = storage.url("playground/probe.png", 60)  # signed locally: no request is made
    except Exception:  # e.g. no S3 credentials yet; the page still works, images may not
        log.warning("could not presign a storage URL; the playground allows only this origin")
        return None
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(storage: str | None) -> str:
    """Only this page's own script and style; data from this origin and the image storage."""
    extra = f" {storage}" if storage else ""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {SCRIPT_SRC}",
            f"style-src {STYLE_SRC}",
            # blob: images fetched with an API key, data: the init image preview; a plain
            # <img> follows the image route's redirect to presigned storage URLs.
            f"img-src 'self' blob: data:{extra}",
            # fetch() of the API, and of images (redirected to storage) when a key is set.
            f"connect-src 'self'{extra}",
            "form-action 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


@router.get("/", response_class=HTMLResponse)
def playground(request: Request, services: ServicesDep) -> HTMLResponse:
    """The playground page."""
    state = request.app.state
    if not hasattr(state, "playground_csp"):  # once per app: its storage does not change
        state.playground_csp = content_security_policy(storage_origin(services.storage))
    return HTMLResponse(
        PAGE,
        headers={
            "Content-Security-Policy": state.playground_csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
