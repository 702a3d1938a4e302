"""`python -m worker`: one worker for the configured model."""

from app.core.logs import configure_logging
from app.core.settings import get_settings
from worker.libraries import route_library_logs

# Logging first: the model libraries speak as soon as they are imported.
configure_logging(get_settings().log_level)
route_library_logs()

from worker.main import main  # noqa: E402

main()
