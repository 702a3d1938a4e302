"""The load-with-a-fault scenario of `bench/load.py`, at a size CI affords (the bench runs 1000)."""

from pathlib import Path

from bench.load import run


def test_every_accepted_job_ends_once_though_a_worker_dies(
    tmp_path: Path, model_cache: Path
) -> None:
    result = run(jobs=200, clients=20, kill_after=60, workdir=tmp_path, cache=model_cache)
    assert result["accepted"] == result["ended"] == 200 and result["duplicates"] == 0
    assert result["statuses"] == {"succeeded": 200}
    assert result["with_two_results"] == 0  # a job's record takes one result, once
    assert len(result["jobs_per_worker"]) == 2  # both workers served before the kill
