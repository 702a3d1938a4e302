"""Python client of ldm-serve: `Client` (sync) and `AsyncClient`, and the `ldm` command."""

from ldm_client.client import AsyncClient, Client
from ldm_client.errors import ApiError, JobFailed

__all__ = ["ApiError", "AsyncClient", "Client", "JobFailed"]
