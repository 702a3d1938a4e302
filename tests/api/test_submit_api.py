"""The 202 of a submit is built from what its transaction wrote, not read back: same answer."""

from fastapi.testclient import TestClient


def test_each_submit_answers_with_its_place_in_the_queue(client: TestClient) -> None:
    jobs = [client.post("/v1/jobs", json={"prompt": f"p{i}"}).json() for i in range(3)]
    assert [job["queue_position"] for job in jobs] == [0, 1, 2]
    assert [client.get(f"/v1/jobs/{job['id']}").json() for job in jobs] == jobs
