"""`ldm`: generate images, check and cancel jobs, list models, from a shell.

Exit codes scripts can rely on: 0 done; 1 the job failed or was canceled; 2 a bad request
(usage, validation, unknown job); 3 the service is unavailable, overloaded or unreachable
(retry later); 130 interrupted.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from ldm_client.client import Client, Job, settings
from ldm_client.errors import ApiError, JobFailed

OK, JOB_FAILED, BAD_REQUEST, UNAVAILABLE, INTERRUPTED = 0, 1, 2, 3, 130
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def size(text: str) -> tuple[int, int]:
    """`512x512` as (width, height)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, like 512x512, not {text!r}")
    return int(width), int(height)


def lora(text: str) -> dict[str, Any]:
    """`name` or `name:0.8` as a request's adapter."""
    name, sep, scale = text.partition(":")
    try:
        return {"name": name, "scale": float(scale)} if sep else {"name": name}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:SCALE, not {text!r}") from None


def parser() -> argparse.ArgumentParser:
    """The command line: `ldm [--url URL] generate|status|cancel|models ...`."""
    main = argparse.ArgumentParser(prog="ldm", description=__doc__.split("\n")[0])
    main.add_argument("--url", help="service URL (default $LDM_URL, else http://localhost:8000)")
    commands = main.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="make images and save them")
    gen.add_argument("prompt")
    gen.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="where to save (.png, .jpg, .webp); with -n 2, out-0.png, out-1.png",
    )
    gen.add_argument("--init-image", type=Path, help="image-to-image from this file")
    gen.add_argument("--mask", type=Path, help="inpaint: white in this mask is repainted")
    gen.add_argument(
        "--lora",
        type=lora,
        action="append",
        dest="loras",
        metavar="NAME[:SCALE]",
        help="apply this adapter of the model (repeat to stack them)",
    )
    gen.add_argument("--strength", type=float, help="how far from the init image (0-1]")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--steps", type=int, dest="num_inference_steps")
    gen.add_argument("--guidance", type=float, dest="guidance_scale")
    gen.add_argument("--negative", dest="negative_prompt")
    gen.add_argument("--size", type=size, help="WIDTHxHEIGHT (default the model's)")
    gen.add_argument("-n", type=int, dest="num_images", help="how many images")
    gen.add_argument("--model")
    gen.add_argument("--timeout", type=float, help="seconds to wait for the job")
    for name, text in (("status", "show a job"), ("cancel", "cancel a job")):
        commands.add_parser(name, help=text).add_argument("job_id")
    commands.add_parser("models", help="list the served models")
    return main


class Progress:
    """One bar: the queue position while waiting, then denoising steps."""

    def __init__(self) -> None:
        self.bar = tqdm(total=None, unit="step", file=sys.stderr, leave=True)

    def update(self, job: Job) -> None:
        """Show where `job` is now."""
        if job["status"] == "queued":
            self.bar.set_description(f"queued, position {job.get('queue_position') or 0}")
        elif job.get("progress"):
            self.bar.set_description(job["status"])
            self.bar.total = job["progress"]["total_steps"]
            self.bar.n = job["progress"]["step"]
            self.bar.refresh()

    def close(self) -> None:
        """Leave the bar as it ended."""
        self.bar.close()


def outputs(path: Path, count: int) -> list[Path]:
    """Where `count` images go: `path` itself for one, else `stem-i.suffix`."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def offer_cancel(client: Client, job_id: str) -> int:
    """After Ctrl-C while waiting: ask, then cancel (the default) or leave the job running."""
    print(f"\ncancel job {job_id}? [Y/n] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline().strip().lower()
    except KeyboardInterrupt:
        answer = "y"
    if answer in ("", "y", "yes"):
        client.cancel(job_id)
        print(f"canceled {job_id}", file=sys.stderr)
    else:
        print(f"job {job_id} goes on: ldm status {job_id}", file=sys.stderr)
    return INTERRUPTED


def generate(client: Client, args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "strength",
            "seed",
            "num_inference_steps",
            "guidance_scale",
            "negative_prompt",
            "num_images",
            "model",
            "loras",
        )
    }
    if args.size:
        options["width"], options["height"] = args.size
    options["output_format"] = FORMATS.get(args.output.suffix.lower(), "png")
    images = {"init_image": args.init_image, "mask_image": args.mask}
    job_id = client.submit(args.prompt, **images, **options)["id"]
    progress = None
    try:  # from here on, Ctrl-C is about this job
        print(f"job {job_id}", file=sys.stderr, flush=True)
        progress = Progress()
        job = client.wait(job_id, args.timeout, on_update=progress.update)
    except KeyboardInterrupt:
        return offer_cancel(client, job_id)
    finally:
        if progress is not None:
            progress.close()
    images = client.images(job)
    for image, path in zip(images, outputs(args.output, len(images)), strict=True):
        image.save(path)
        print(path)
    return OK


def run(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        if args.command == "generate":
            return generate(client, args)
        if args.command == "models":
            for model in client.models():
                default = " (default)" if model["default"] else ""
                print(
                    f"{model['name']}{default}: {model['native_width']}x{model['native_height']}, "
                    f"{model['default_steps']} steps, {model['queue_length']} queued, "
                    f"{model['live_workers']} workers"
                )
            return OK
        job = client.get(args.job_id) if args.command == "status" else client.cancel(args.job_id)
        print(json.dumps(job, indent=2))
        return OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ldm`; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except JobFailed as failed:
        print(f"ldm: {failed}", file=sys.stderr)
        return JOB_FAILED
    except ApiError as error:
        print(f"ldm: {error}", file=sys.stderr)
        return UNAVAILABLE if error.retryable or error.status >= 500 else BAD_REQUEST
    except (httpx.TransportError, TimeoutError) as error:
        where = settings(args.url, None)[0]
        print(f"ldm: cannot reach the service at {where}: {error}", file=sys.stderr)
        return UNAVAILABLE
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
