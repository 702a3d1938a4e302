"""`python -m app`: serve the API with uvicorn on LDM_HOST:LDM_PORT."""

import uvicorn

from app.core.logs import configure_logging
from app.core.settings import get_settings


def main() -> None:
    """Run the API server in the foreground."""
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        # Explicit, not "auto": a missing uvloop or httptools fails at start, not silently slower.
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        log_config=None,  # ours: JSON lines with request and job ids
        # Event streams and synchronous generations never end by themselves: on shutdown they
        # are cut inside Kubernetes' default 30 s grace (SSE clients resume by Last-Event-ID).
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
