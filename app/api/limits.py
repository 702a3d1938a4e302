"""Request body policy: JSON only (415 otherwise) but for form routes, and nothing over the size
limit (413)."""

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import BodyTooLarge, problem


class BodySizeLimit:
    """ASGI middleware: checks Content-Length up front and counts streamed bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            await problem(413, error.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the body read, so the route's error handling answers 413.
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


_JSON_TYPES = (b"application/json",)
# `curl -d` sends this type by habit; no route of ours takes forms, so it means JSON.
_READ_AS_JSON = (b"", b"application/x-www-form-urlencoded")
_FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")


class JsonBodies:
    """ASGI middleware: request bodies are JSON; other declared types get 415. The paths in
    `form_paths` take multipart/form-data instead (OpenAI's image edits)."""

    def __init__(self, app: ASGIApp, form_paths: Collection[str] = ()) -> None:
        self.app = app
        self.form_paths = frozenset(form_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-length", b"") == b"0":
            await self.app(scope, receive, send)
            return
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["path"] in self.form_paths:
            if media_type not in _FORM_TYPES:
                detail = "this route takes a form: send Content-Type: multipart/form-data"
                await problem(415, detail)(scope, receive, send)
                return
        elif media_type in _READ_AS_JSON:
            # In place: the router records the matched route in this same scope.
            rest = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*rest, (b"content-type", b"application/json")]
        elif media_type not in _JSON_TYPES and not media_type.endswith(b"+json"):
            detail = "request bodies are JSON: send Content-Type: application/json"
            await problem(415, detail)(scope, receive, send)
            return
        await self.app(scope, receive, send)
