"""The official `openai` package, unchanged, against a real service (Redis, API, worker)."""

import base64
import io
import time

import anyio
import httpx
import openai
import pytest
from PIL import Image

from scripts.stack import LocalStack
from tests.e2e.conftest import BUSY

FAST = {"num_inference_steps": 2}  # this service's extension, sent as the package allows


def client_of(api: httpx.Client, api_key: str = "unused", **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=api_key, **options)


def job_ids(stack: LocalStack) -> set[str]:
    keys = [key.decode() for key in stack.redis.scan_iter("ldm:job:j_*")]
    return {key.split(":")[2] for key in keys if key.count(":") == 2}


def test_b64_json_returns_n_images_of_the_size_asked(stack: LocalStack) -> None:
    result = client_of(stack.http).images.generate(
        prompt="a red circle",
        n=2,
        size="64x96",
        response_format="b64_json",
        output_format="webp",
        quality="high",  # accepted, and ignored
        extra_body=FAST | {"seed": 7},
    )
    assert (result.size, result.output_format) == ("64x96", "webp")
    assert abs(result.created - time.time()) < 120
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    assert [(image.format, image.size) for image in images] == [("WEBP", (64, 96))] * 2


def test_urls_point_at_the_images(stack: LocalStack) -> None:
    result = client_of(stack.http).images.generate(prompt="a blue square", extra_body=FAST)
    (item,) = result.data
    assert item.b64_json is None and item.url.startswith(f"{stack.http.base_url}/v1/jobs/")
    fetched = httpx.get(item.url, timeout=10)
    assert fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)  # the model's native size


def test_bad_requests_raise_the_packages_exceptions(stack: LocalStack) -> None:
    client = client_of(stack.http)
    before = job_ids(stack)
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(prompt="x", size="100x100")
    assert bad_size.value.body == {
        "message": "size (width): Input should be a multiple of 8; "
        "size (height): Input should be a multiple of 8",
        "type": "invalid_request_error",
        "param": "size",
        "code": "invalid_value",
    }
    assert bad_size.value.param == "size" and bad_size.value.code == "invalid_value"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(prompt="x", model="dall-e-3")
    assert unknown.value.code == "model_not_found"
    assert job_ids(stack) == before


def test_a_wrong_key_is_an_authentication_error_and_the_async_client_works(
    stack: LocalStack,
) -> None:
    locked = stack.start_api(LDM_API_KEYS="team:s3cret-key")
    with pytest.raises(openai.AuthenticationError) as wrong:
        client_of(locked, "not-the-key").images.generate(prompt="x")
    assert wrong.value.code == "invalid_api_key"

    async def generate() -> openai.types.ImagesResponse:
        async with openai.AsyncOpenAI(
            base_url=f"{locked.base_url}/v1", api_key="s3cret-key"
        ) as client:
            return await client.images.generate(
                prompt="a green square", response_format="b64_json", extra_body=FAST
            )

    (item,) = anyio.run(generate).data
    assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == (64, 64)


def test_the_wait_is_bounded_and_the_job_canceled_not_resubmitted(stack: LocalStack) -> None:
    impatient = stack.start_api(LDM_SYNC_WAIT_TIMEOUT="1")
    busy = stack.submit(BUSY)
    stack.wait(busy["id"], {"running"})
    try:
        before = job_ids(stack)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as late:
            # Busy's size: it waits behind busy (2 retries by the package).
            client_of(impatient).images.generate(prompt="waits", size="512x512", extra_body=FAST)
        assert late.value.status_code == 504 and late.value.code == "timeout"
        assert time.monotonic() - started < 10
        (job_id,) = job_ids(stack) - before  # the package did not submit it again
        assert late.value.response.headers["x-job-id"] == job_id
        assert stack.job(job_id)["status"] == "canceled"

        # A client that hangs up (here: its own timeout) cancels its job as well.
        before = job_ids(stack)
        with pytest.raises(openai.APITimeoutError):
            client_of(stack.http, max_retries=0, timeout=1).images.generate(prompt="gone")
        (gone,) = job_ids(stack) - before
        assert stack.wait(gone, timeout=10)["status"] == "canceled"
    finally:
        stack.http.post(f"/v1/jobs/{busy['id']}/cancel")


def test_a_stream_sends_partial_images_spread_over_the_run_then_the_image(
    stack: LocalStack,
) -> None:
    # About 2 s on the tiny model: previews every 250 ms, enough for the partial images.
    slow = {"num_inference_steps": 60, "seed": 11}
    with client_of(stack.http).images.generate(
        prompt="a red circle", size="256x128", stream=True, partial_images=2, extra_body=slow
    ) as stream:
        job_id = stream.response.headers["x-job-id"]
        events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events:
        assert (event.size, event.output_format, event.quality) == ("256x128", "png", "auto")
        image = Image.open(io.BytesIO(base64.b64decode(event.b64_json)))
        assert (image.format, image.size) == ("PNG", (256, 128))
    job = stack.job(job_id)
    assert job["request"]["previews"] is True and job["status"] == "succeeded"
    assert base64.b64decode(events[-1].b64_json) == stack.image(job).content
    assert events[-1].usage.total_tokens == 0


def test_a_stream_without_partial_images_sends_only_the_images(stack: LocalStack) -> None:
    stream = client_of(stack.http).images.generate(
        prompt="a blue square", n=2, stream=True, partial_images=0, extra_body=FAST | {"seed": 2}
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    job = stack.job(stream.response.headers["x-job-id"])
    assert job["request"]["previews"] is False  # nothing to forward: none are made
    assert [base64.b64decode(e.b64_json) for e in events] == [
        stack.image(job, i).content for i in range(2)
    ]


def test_a_stream_whose_job_is_canceled_raises_the_packages_error(stack: LocalStack) -> None:
    stream = client_of(stack.http).images.generate(
        prompt="canceled", size="512x512", stream=True, extra_body={"num_inference_steps": 100}
    )
    job_id = stream.response.headers["x-job-id"]
    stack.wait(job_id, {"running"})
    stack.http.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
    with pytest.raises(openai.APIError) as canceled:
        list(stream)
    assert canceled.value.code == "canceled" and job_id in canceled.value.message
