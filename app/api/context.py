"""Every request gets an id (the client's `X-Request-ID` when sane), echoed back and logged."""

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import bind, unbind

_SANE = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    """ASGI middleware: sets the log context of a request and returns its id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        rid = given.decode() if _SANE.match(given) else uuid.uuid4().hex
        token = bind(request_id=rid, job_id=None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            unbind(token)
