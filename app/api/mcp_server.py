"""MCP (Model Context Protocol) at /mcp over streamable HTTP, with the official `mcp` SDK: the
tools of app/api/mcp_tools.py for agents, behind the REST API's keys and tenant isolation."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Request, Response
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from app.api.deps import Services, TenantDep
from app.api.mcp_tools import TENANT_SCOPE_KEY, build_server

PATH = "/mcp"
router = APIRouter(tags=["mcp"])


class McpService:
    """One app's MCP server, and its transport while the app runs (`run` in the lifespan)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.server = build_server(services)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Serve MCP until the app stops. A transport runs once: each lifespan makes its own."""
        self.server.streamable_http_app(
            streamable_http_path=PATH,
            # Stateless: every request stands alone (no Mcp-Session-Id kept in this process),
            # so any API replica behind a round-robin balancer answers any request, as for
            # REST. Progress still streams, on the response to the tools/call itself.
            stateless_http=True,
            max_request_body_size=self.services.settings.max_body_bytes,
            # The SDK's DNS-rebinding guard admits only localhost Host headers: the API serves
            # whatever host name its deployment gives it, and API keys guard it (as /v1).
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        async with self.server.session_manager.run():
            yield

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one MCP HTTP request (the SDK's transport reads the body and responds)."""
        await self.server.session_manager.handle_request(scope, receive, send)


class _McpExchange(Response):
    """The answer to an authenticated /mcp request: the MCP transport writes it, and the
    tools find the tenant in the request's scope."""

    def __init__(self, mcp: McpService, tenant: str) -> None:
        super().__init__()
        self.mcp = mcp
        self.tenant = tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[TENANT_SCOPE_KEY] = self.tenant
        await self.mcp.handle(scope, receive, send)


# A route (not a mount) so that the API key is checked by the same dependency as /v1, a missing
# or wrong key answers the same 401 problem, and /mcp needs no redirect to /mcp/.
@router.api_route(PATH, methods=["GET", "POST", "DELETE"], include_in_schema=False)
async def mcp_endpoint(request: Request, tenant: TenantDep) -> Response:
    """MCP over streamable HTTP for the tenant of the request's API key."""
    return _McpExchange(request.app.state.mcp, tenant)
