"""What the two caches buy: a repeated request answered from the exact-result cache, and the
worker's prompt-embedding cache on a load where prompts repeat.

    python -m bench.cache [--quick] [--requests N] [--rounds N]

1. Exact results (a real service: Redis, an API, one tiny-sd worker). A job runs once; then
   N identical POSTs are each answered from storage by the POST itself. Their latency is
   timed at the client, over one keep-alive connection, against N `GET /v1/jobs/{id}` (the
   cheapest call the API answers, same connection, interleaved with them) and against the
   same job run again with `"cache": false` (submit to `finished_at`).
2. Prompt embeddings (in this process, the engine without the service around it). 64 jobs,
   8 prompts asked with 8 seeds each, at the model's 20 steps and at 4 (a few-step model's
   regime, where a job's fixed costs weigh most), all submitted at once to a
   worker's engine with its prompt cache (256 texts) and without (0); each round clears the
   cache first and runs both, in alternating order; the ratio of jobs/s is taken per round
   and the median quoted. tiny-sd's text encoder is a sliver of a job, so the same load's
   prompts also go through a real-size one (SD 1.x's CLIP ViT-L/14 text tower, from its
   published config with random weights), one call per 16 admitted jobs as the engine asks,
   with the cache and without: the text-encoding seconds a worker saves.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from app.core.jobs import JobCreate
from app.core.models import model_spec
from app.core.resolve import resolve_request
from app.core.settings import Settings
from scripts.stack import LocalStack
from worker.engine.state import EngineRequest
from worker.libraries import route_library_logs
from worker.pipeline import ResidentPipeline

BODY = {"prompt": "a red circle", "seed": 1234}
PROMPTS = [f"a {c} {s}" for c in ("red", "blue") for s in ("circle", "square", "star", "ring")]
MODEL_CACHE = Path(".cache/models").resolve()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call()
    return time.perf_counter() - started, response


def exact_results(requests: int) -> dict[str, Any]:
    """Latency of a repeated request (cached) against a poll and against a real run."""
    with tempfile.TemporaryDirectory() as workdir:
        with LocalStack(Path(workdir), MODEL_CACHE, LDM_RESULT_CACHE="true") as stack:
            stack.start_api()
            stack.start_worker()
            first = stack.wait(stack.submit(BODY)["id"], timeout=120, poll=0.01)
            assert first["status"] == "succeeded" and not first["cached"], first
            cached, polls = [], []
            for _ in range(requests):
                seconds, response = timed(lambda: stack.http.post("/v1/jobs", json=BODY))
                job = response.json()
                assert response.status_code == 202 and job["cached"], job
                cached.append(seconds)
                seconds, _ = timed(lambda: stack.http.get(f"/v1/jobs/{first['id']}"))
                polls.append(seconds)
            runs = []
            for _ in range(3):
                started = time.time()
                job = stack.submit(BODY | {"cache": False})
                done = stack.wait(job["id"], timeout=120, poll=0.005)
                assert not done["cached"]
                runs.append(datetime.fromisoformat(done["finished_at"]).timestamp() - started)
    return {
        "requests": requests,
        "cached_p50_ms": 1000 * statistics.median(cached),
        "cached_p95_ms": 1000 * percentile(cached, 0.95),
        "poll_p50_ms": 1000 * statistics.median(polls),
        "poll_p95_ms": 1000 * percentile(polls, 0.95),
        "run_median_ms": 1000 * statistics.median(runs),
    }


def embedding_gain(rounds: int, jobs: int, steps: int) -> dict[str, Any]:
    """Jobs/s of one engine over repeated prompts, with the prompt cache and without."""
    settings = Settings(model="tiny-sd", model_cache=MODEL_CACHE, device="cpu")
    spec = model_spec(settings)
    pipelines = {
        True: ResidentPipeline.load(settings),
        False: ResidentPipeline.load(settings.model_copy(update={"prompt_cache": 0})),
    }
    params = [
        resolve_request(
            JobCreate(prompt=PROMPTS[i % len(PROMPTS)], seed=i, num_inference_steps=steps),
            spec,
            settings,
        )
        for i in range(jobs)
    ]
    for pipeline in pipelines.values():
        pipeline.generate(params[0])  # warm-up
    ratios, rates = [], {True: [], False: []}
    for i in range(rounds):
        this_round = {}
        for cached in (True, False) if i % 2 == 0 else (False, True):
            pipeline = pipelines[cached]
            pipeline.family.texts.prompts.clear()  # each round starts cold
            engine = pipeline.engine()
            started = time.perf_counter()
            for n, job in enumerate(params):
                engine.submit(EngineRequest(f"job-{n}", job))
            assert all(outcome.ok for outcome in engine.run())
            this_round[cached] = jobs / (time.perf_counter() - started)
            rates[cached].append(this_round[cached])
        ratios.append(this_round[True] / this_round[False])
        print(
            f"{steps} steps, round {i + 1}: prompt cache on {this_round[True]:.1f} jobs/s, "
            f"off {this_round[False]:.1f} jobs/s, ratio {ratios[-1]:.3f}",
            flush=True,
        )
    return {
        "jobs": jobs,
        "prompts": len(PROMPTS),
        "steps": params[0].num_inference_steps,
        "on_per_s": statistics.median(rates[True]),
        "off_per_s": statistics.median(rates[False]),
        "ratio_median": statistics.median(ratios),
    }


def text_encoder_gain(rounds: int, jobs: int, batch: int = 16) -> dict[str, Any]:
    """Seconds a real-size text encoder (SD 1.x's CLIP ViT-L/14 text tower from its published
    config, random weights: its speed does not depend on them) spends on the load's prompts,
    asked as the engine asks (one call per admitted batch), through the prompt cache and not."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from worker.families.prompt_cache import PromptCache

    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
    encoder = CLIPTextModel(config).eval()

    def encode(texts: list) -> list:
        # Token values do not change the encoder's cost: 77 per text, as the tokenizer pads.
        ids = torch.randint(0, config.vocab_size, (len(texts), config.max_position_embeddings))
        with torch.inference_mode():
            states = encoder(input_ids=ids).last_hidden_state
        return [{"embeds": row} for row in states]

    texts = [PROMPTS[i % len(PROMPTS)] for i in range(jobs)]
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for cached in (True, False) if i % 2 == 0 else (False, True):
            prompts = PromptCache(encode, 256 if cached else 0)
            started = time.perf_counter()
            for first in range(0, jobs, batch):
                prompts.get(texts[first : first + batch])
            seconds[cached].append(time.perf_counter() - started)
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(
        f"CLIP ViT-L text encoder, {jobs} prompts: cached {on:.2f} s, not {off:.2f} s", flush=True
    )
    return {"jobs": jobs, "on_s": on, "off_s": off, "saved": 1 - on / off}


def main() -> None:
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: check, do not quote")
    parser.add_argument("--requests", type=int, default=None, help="default 300 (quick: 20)")
    parser.add_argument("--rounds", type=int, default=None, help="default 4 (quick: 1)")
    args = parser.parse_args()
    route_library_logs()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    exact = exact_results(args.requests or (20 if args.quick else 300))
    rounds, jobs = args.rounds or (1 if args.quick else 4), 16 if args.quick else 64
    gains = [embedding_gain(rounds, jobs, steps) for steps in ((4,) if args.quick else (20, 4))]
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(
        f"tiny-sd 64x64, CPU ({machine}), {time.monotonic() - started:.0f} s, "
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"command: python -m bench.cache {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"repeated request (cached), {exact['requests']} POSTs: p50 {exact['cached_p50_ms']:.1f} "
        f"ms, p95 {exact['cached_p95_ms']:.1f} ms; a GET poll: p50 {exact['poll_p50_ms']:.1f} ms, "
        f"p95 {exact['poll_p95_ms']:.1f} ms; the job run again: {exact['run_median_ms']:.0f} ms"
    )
    encoder = text_encoder_gain(rounds, jobs)
    for gain in gains:
        print(
            f"prompt cache, {gain['jobs']} jobs of {gain['prompts']} prompts, {gain['steps']} "
            f"steps: on {gain['on_per_s']:.1f} jobs/s, off {gain['off_per_s']:.1f} jobs/s, "
            f"on / off median {gain['ratio_median']:.3f}"
        )

    print(
        f"prompt cache, text encoding of {encoder['jobs']} jobs' prompts (SD 1.x's CLIP ViT-L, "
        f"CPU): {encoder['on_s']:.2f} s cached, {encoder['off_s']:.2f} s not "
        f"({100 * encoder['saved']:.0f}% saved)"
    )


if __name__ == "__main__":
    main()
