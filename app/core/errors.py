"""Service errors, raised anywhere and turned into HTTP answers only at the HTTP layer."""

from dataclasses import dataclass


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class JobNotFound(ServiceError):
    """No job with that id, or it has expired."""


class ImageNotFound(ServiceError):
    """The job has no image at that index (yet)."""


class JobConflict(ServiceError):
    """The job is in a state that does not allow the operation."""


@dataclass(frozen=True)
class FieldError:
    """One bad field of a request: where it is and how to fix it."""

    field: str
    message: str


class InvalidRequest(ServiceError):
    """The request is well-formed but breaks a rule that depends on settings or the model."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class Unauthorized(ServiceError):
    """No valid API key for a service that requires one."""


class Overloaded(ServiceError):
    """Base of the errors that ask the client to come back after `retry_after` seconds."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class QueueFull(Overloaded):
    """The model's queue holds as many jobs as the deployment allows; retry later."""


class NotDurable(Overloaded):
    """The job was written but no replica confirmed it in time (Redis Sentinel setups)."""


class RateLimited(Overloaded):
    """The tenant submits faster than its rate limit."""


class TooManyQueued(RateLimited):
    """The tenant has as many jobs waiting as its policy allows (`max_queued`)."""
