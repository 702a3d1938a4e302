"""`python -m worker`: one worker for the configured model."""

from worker.main import main

main()
