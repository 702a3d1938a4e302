"""API keys and the tenants they stand for; keys are kept hashed and compared in constant time."""

import hashlib
import hmac

from pydantic import SecretStr

# The tenant of every request when no keys are configured (an open service).
OPEN_TENANT = "public"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The `tenant:key` pairs of `LDM_API_KEYS`, as digests only."""

    def __init__(self, spec: SecretStr | None) -> None:
        self._tenants: list[tuple[bytes, str]] = []
        for pair in (spec.get_secret_value() if spec else "").split(","):
            if not pair.strip():
                continue
            tenant, sep, key = pair.strip().partition(":")
            if not sep or not tenant or not key:
                raise ValueError("LDM_API_KEYS must be comma-separated tenant:key pairs")
            self._tenants.append((_digest(key), tenant))

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call the API."""
        return not self._tenants

    @property
    def tenants(self) -> set[str]:
        """The configured tenants (`public` alone on an open service)."""
        return {tenant for _, tenant in self._tenants} or {OPEN_TENANT}

    def tenant_of(self, key: str) -> str | None:
        """The tenant whose key this is, or None; the time taken does not depend on the key."""
        presented = _digest(key)
        found = None
        for digest, tenant in self._tenants:  # no early exit
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found
