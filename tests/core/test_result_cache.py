"""What the exact-result cache keys a request by: everything that decides its pixels, nothing
that only decides when or how it is shown."""

from app.core.result_cache import request_digest
from tests.factories import make_params


def test_the_same_request_has_the_same_digest_whatever_its_priority_or_previews() -> None:
    base = request_digest(make_params())
    assert request_digest(make_params()) == base
    assert request_digest(make_params(priority="high", previews=True)) == base


def test_whatever_changes_the_pixels_changes_the_digest() -> None:
    base = request_digest(make_params())
    changes = [
        {"seed": 43},
        {"prompt": "a red square"},
        {"negative_prompt": "blur"},
        {"width": 72},
        {"num_inference_steps": 5},
        {"guidance_scale": 3.0},
        {"num_images": 2},
        {"output_format": "webp"},
        {"scheduler": "ddim"},
        {"model": "tiny-shapes"},
    ]
    digests = {request_digest(make_params(**change)) for change in changes}
    assert base not in digests and len(digests) == len(changes)


def test_input_images_are_part_of_the_request() -> None:
    params = make_params(mode="image-to-image", strength=0.5)
    one, other = request_digest(params, [b"png-1"]), request_digest(params, [b"png-2"])
    assert one != other and one == request_digest(params, [b"png-1"])
    assert request_digest(params, [b"png-1", b"mask"]) != one
