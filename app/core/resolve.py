"""Turn a client's `JobCreate` into `JobParams`: model defaults, deployment limits, the seed."""

import math
import secrets

from app.core.errors import FieldError, InvalidRequest
from app.core.images import fit_size
from app.core.jobs import MAX_SEED, JobCreate, JobParams, LoraUse
from app.core.loras import Adapter
from app.core.models import ModelSpec
from app.core.settings import Settings


def select_model(name: str | None, served: dict[str, ModelSpec], default: str) -> ModelSpec:
    """The spec of the requested model, or the default; `InvalidRequest` if it is not served."""
    spec = served.get(name or default)
    if spec is None:
        raise InvalidRequest(
            [FieldError("body.model", f"not a served model; choose one of {sorted(served)}")]
        )
    return spec


def _scheduler_error(scheduler: str | None, spec: ModelSpec) -> FieldError | None:
    if scheduler is None or scheduler in spec.schedulers:
        return None
    if not spec.schedulers:
        message = (
            f"{spec.name} runs as one diffusers pipeline call and takes its own scheduler; "
            "leave scheduler out"
        )
    else:
        message = (
            f"{scheduler!r} is not a scheduler of {spec.name} ({spec.family} model); "
            f"choose one of {list(spec.schedulers)}"
        )
    return FieldError("body.scheduler", message)


def _loras(
    body: JobCreate, spec: ModelSpec, settings: Settings, adapters: dict[str, Adapter]
) -> tuple[list[FieldError], tuple[LoraUse, ...]]:
    """The request's adapters pinned to the files the registry has now (name -> sha256)."""
    if not body.loras:
        return [], ()
    if not spec.takes_loras:
        message = f"{spec.name} ({spec.family} model) takes no LoRA adapters; leave loras out"
        return [FieldError("body.loras", message)], ()
    errors, uses, seen = [], [], set()
    if len(body.loras) > settings.max_loras:
        errors.append(FieldError("body.loras", f"at most {settings.max_loras} adapters"))
    for i, lora in enumerate(body.loras):
        adapter = adapters.get(lora.name)
        if lora.name in seen:
            errors.append(FieldError(f"body.loras.{i}.name", f"{lora.name!r} is listed twice"))
        elif adapter is None:
            known = f"choose one of {sorted(adapters)}" if adapters else "it has none"
            message = f"{lora.name!r} is not an adapter of {spec.name}; {known}"
            errors.append(FieldError(f"body.loras.{i}.name", message))
        else:
            uses.append(LoraUse(name=lora.name, scale=lora.scale, sha256=adapter.sha256))
        seen.add(lora.name)
    return errors, tuple(uses)


def _mask_errors(
    body: JobCreate,
    spec: ModelSpec,
    init_size: tuple[int, int] | None,
    mask_size: tuple[int, int] | None,
) -> list[FieldError]:
    if mask_size is None:
        if spec.inpainting_only:
            message = f"{spec.name} is an inpainting checkpoint: send init_image and mask_image"
            return [FieldError("body.mask_image", message)]
        return []
    if init_size is None:
        return [FieldError("body.mask_image", "a mask needs init_image: the picture to repaint")]
    if "inpainting" not in spec.modes:
        message = f"{spec.name} ({spec.family} model) does not inpaint; leave mask_image out"
        return [FieldError("body.mask_image", message)]
    if mask_size != init_size:
        message = (
            f"the mask is {mask_size[0]}x{mask_size[1]} but init_image is "
            f"{init_size[0]}x{init_size[1]}; send a mask of the image's size"
        )
        return [FieldError("body.mask_image", message)]
    return []


def _steps_for_strength(steps: int, strength: float) -> int:
    """The fewest steps from `steps` up that run at least one denoising step at `strength`
    (diffusers runs int(steps * strength) of them)."""
    steps = max(steps, math.ceil(1 / strength))
    while int(steps * strength) < 1:  # 1 / strength can round below the true quotient
        steps += 1
    return steps


def resolve_request(
    body: JobCreate,
    spec: ModelSpec,
    settings: Settings,
    init_size: tuple[int, int] | None = None,
    mask_size: tuple[int, int] | None = None,
    adapters: dict[str, Adapter] | None = None,
) -> JobParams:
    """Fill defaults and check the bounds that depend on settings; raise `InvalidRequest`.
    `adapters` are the model's in the registry; `mask_size` is that of a decoded mask."""
    errors: list[FieldError] = []
    img2img = init_size is not None
    inpainting = img2img and mask_size is not None
    errors += _mask_errors(body, spec, init_size, mask_size)
    lora_errors, loras = _loras(body, spec, settings, adapters or {})
    errors += lora_errors
    # diffusers' inpainting pipelines repaint from pure noise unless told otherwise.
    strength = body.strength if "strength" in body.model_fields_set or not inpainting else 1.0
    if "strength" in body.model_fields_set and not img2img:
        errors.append(FieldError("body.strength", "strength only applies with init_image"))
    if error := _scheduler_error(body.scheduler, spec):
        errors.append(error)

    multiple = spec.size_multiple
    if init_size and body.width is None and body.height is None:
        # Image-to-image keeps the init image's aspect unless told otherwise.
        width, height = fit_size(*init_size, settings.max_side, settings.max_pixels, multiple)
    else:
        width = body.width or spec.native_size
        height = body.height or spec.native_size
    for field, side in (("width", width), ("height", height)):
        if side > settings.max_side:
            errors.append(FieldError(f"body.{field}", f"must be at most {settings.max_side}"))
        elif side % multiple:
            errors.append(
                FieldError(
                    f"body.{field}",
                    f"must be a multiple of {multiple} for {spec.name} ({spec.family} model); "
                    f"try {side // multiple * multiple}",
                )
            )
    if width * height > settings.max_pixels:
        errors.append(
            FieldError("body.width", f"width*height must be at most {settings.max_pixels} pixels")
        )

    steps = body.num_inference_steps or spec.default_steps
    raised = False
    if img2img and body.num_inference_steps is None:
        # Turbo models default to 1 step, which runs nothing at strength < 1: a client that
        # left steps to the model gets enough of them (diffusers: steps x strength >= 1).
        needed = _steps_for_strength(steps, strength)
        raised, steps = needed > steps, needed
    if steps > settings.max_steps and raised:
        errors.append(
            FieldError(
                "body.strength",
                f"strength {strength} needs {steps} steps, more than the "
                f"{settings.max_steps} allowed; raise strength",
            )
        )
    elif steps > settings.max_steps:
        errors.append(
            FieldError("body.num_inference_steps", f"must be at most {settings.max_steps}")
        )
    elif img2img and int(steps * strength) < 1:
        errors.append(
            FieldError(
                "body.strength",
                f"strength {strength} with {steps} steps runs no denoising step; "
                "raise strength or num_inference_steps",
            )
        )
    if body.num_images > settings.max_images:
        errors.append(FieldError("body.num_images", f"must be at most {settings.max_images}"))
    if body.seed is not None and body.seed + body.num_images - 1 > MAX_SEED:
        errors.append(FieldError("body.seed", f"seed + num_images - 1 must be at most {MAX_SEED}"))
    if errors:
        raise InvalidRequest(errors)
    # Drawn only now that num_images is known to be sane; leaves room for every seed + i.
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED - body.num_images + 2)

    return JobParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        mode="inpainting" if inpainting else "image-to-image" if img2img else "text-to-image",
        strength=strength if img2img else None,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=(
            spec.default_guidance_scale if body.guidance_scale is None else body.guidance_scale
        ),
        num_images=body.num_images,
        seed=seed,
        output_format=body.output_format,
        model=spec.name,
        scheduler=body.scheduler,
        priority=body.priority,
        previews=body.previews,
        loras=loras,
    )
