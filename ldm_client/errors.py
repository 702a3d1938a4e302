"""Typed errors carrying what the service said (its problem+json fields)."""

from typing import Any

import httpx


class ApiError(Exception):
    """The service answered with an error: `status`, `title`, `detail`, field `errors` and,
    for 429/503, `retry_after` seconds, as its problem+json body gave them."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None) -> None:
        self.status = status
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        self.errors: list[dict[str, Any]] = problem.get("errors") or []
        self.retry_after = retry_after
        fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in self.errors)
        super().__init__(
            f"{status} {self.title}: {self.detail}" + (f" ({fields})" if fields else "")
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """Read a problem+json (or any) error response."""
        try:
            problem = response.json()
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:200]}
        return cls(response.status_code, problem, retry_after(response))

    @property
    def retryable(self) -> bool:
        """Overloaded or briefly unavailable: the same request may succeed later."""
        return self.status in (429, 503)


class JobFailed(Exception):
    """The job ended without images: failed (with the service's error code) or canceled."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        error = job.get("error") or {}
        self.code = error.get("code", job.get("status", ""))
        super().__init__(f"job {job.get('id')} {job.get('status')}: {error.get('message', '')}")


def retry_after(response: httpx.Response) -> float | None:
    """The response's Retry-After in seconds (only the delta-seconds form is sent)."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None
