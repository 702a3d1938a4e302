"""`python -m app`: serve the API with uvicorn on LDM_HOST:LDM_PORT."""

import logging

import uvicorn

from app.core.settings import get_settings


def main() -> None:
    """Run the API server in the foreground."""
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
