"""U-Net latent diffusion (ε- or v-prediction): SD 1.x, SD 2.x, SDXL, SD-Turbo, SDXL-Turbo.

Every formula is diffusers' own (`encode_prompt`, `retrieve_timesteps`, `get_timesteps`,
`prepare_latents`, `_get_add_time_ids`, the VAE's scaling, the image processor), called on
the loaded pipelines with each job's scheduler swapped in; this module only arranges rows."""

from contextlib import nullcontext

import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from PIL import Image

from app.core.families import UNET_SCHEDULERS
from app.core.jobs import JobParams
from worker.engine.schedulers import Schedulers
from worker.engine.state import EngineRequest, JobState
from worker.families.adapters import FamilyAdapters
from worker.families.base import InvalidInput, guided, scheduler_of, seeded, split_rows
from worker.families.inpaint import Inpainter
from worker.families.unet_text import UNetTexts


class UNetFamily:
    """The step-wise math of diffusers' StableDiffusion(XL) text- and image-to-image pipelines."""

    name = "unet"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        device: torch.device,
        safety_checker: bool = True,
        prompt_cache: int = 256,
        adapters: FamilyAdapters | None = None,
    ):
        self.pipe = pipe
        self.adapters = adapters
        loras = adapters.rows if adapters else None
        self.texts = UNetTexts(pipe, device, self.uses_cfg, prompt_cache, loras)
        self.schedulers = Schedulers(pipe.scheduler)
        self.img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        self.inpainter = Inpainter(pipe)
        self.inpainting_only = self.inpainter.channels9  # an inpainting checkpoint's U-Net
        for each in (self.pipe, self.img2img):
            each.set_progress_bar_config(disable=True)
        self.device = device
        self.unet = pipe.unet
        self.xl = hasattr(pipe, "text_encoder_2")
        self.vae_scale = pipe.vae_scale_factor
        self.native_size = pipe.unet.config.sample_size * self.vae_scale
        self.size_multiple = self.vae_scale
        self.safety_checker = safety_checker and getattr(pipe, "safety_checker", None) is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def uses_cfg(self, params: JobParams) -> bool:
        """Whether the job gets unconditional rows: diffusers' `do_classifier_free_guidance`."""
        return params.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def check(self, params: JobParams, init_image: Image.Image | None) -> None:
        for name in ("width", "height"):
            if getattr(params, name) % self.size_multiple:
                raise InvalidInput(f"{name} must be a multiple of {self.size_multiple}")
        if (params.mode != "text-to-image") != (init_image is not None):
            raise InvalidInput("image-to-image needs an init image, text-to-image none")
        if self.inpainting_only and params.mode != "inpainting":
            raise InvalidInput("this is an inpainting checkpoint: send init_image and mask_image")
        if params.denoising_steps < 1:
            raise InvalidInput("strength * num_inference_steps must be at least 1")
        if params.scheduler is not None and params.scheduler not in UNET_SCHEDULERS:
            raise InvalidInput(f"scheduler must be one of {list(UNET_SCHEDULERS)}")

    def ready(self, request: EngineRequest) -> bool:
        """Whether the job may start: its LoRA adapters are loaded (loading starts now)."""
        if self.adapters is None:
            if request.params.loras:
                raise InvalidInput("this worker has no adapter registry; leave loras out")
            return True
        return self.adapters.ready(request)

    def cost(self, params: JobParams) -> int:
        latent_pixels = params.width * params.height // self.vae_scale**2
        return params.num_images * (2 if self.uses_cfg(params) else 1) * latent_pixels

    def prepare(self, requests: list[EngineRequest]) -> list[JobState]:
        """Encode every newcomer's prompts in one text-encoder call, then set up each job."""
        embeds = self.texts.encode(requests)
        states = []
        for request, cond in zip(requests, embeds, strict=True):
            states.append(self._prepare_one(request, cond))
        return states

    def _prepare_one(self, request: EngineRequest, cond: dict[str, torch.Tensor]) -> JobState:
        params = request.params
        n = params.num_images
        cfg = self.uses_cfg(params)
        scheduler = self.schedulers.make(params.scheduler)
        generators = seeded(params)
        dtype = cond["embeds"].dtype
        with torch.inference_mode():
            timesteps, _ = retrieve_timesteps(scheduler, params.num_inference_steps, self.device)
            after_step = None
            if request.mask is not None:
                with scheduler_of(self.img2img, scheduler) as i2i:
                    timesteps, _ = i2i.get_timesteps(
                        params.num_inference_steps, params.strength, self.device
                    )
                inpaint = self.inpainter.prepare(
                    request, scheduler, timesteps, cfg, dtype, self.device, generators
                )
                latents, after_step = inpaint.latents, inpaint.blend
                cond |= inpaint.cond
            elif request.init_image is not None:
                with scheduler_of(self.img2img, scheduler) as i2i:
                    timesteps, _ = i2i.get_timesteps(
                        params.num_inference_steps, params.strength, self.device
                    )
                    size = (params.width, params.height)
                    image = request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
                    pixels = i2i.image_processor.preprocess(image)
                    latents = i2i.prepare_latents(
                        pixels, timesteps[:1].repeat(n), n, 1, dtype, self.device, generators
                    )
            else:
                with scheduler_of(self.pipe, scheduler) as t2i:
                    channels = self.pipe.unet.config.in_channels
                    latents = t2i.prepare_latents(
                        n, channels, params.height, params.width, dtype, self.device, generators
                    )
            with scheduler_of(self.pipe, scheduler) as pipe:
                step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
            rows = n * (2 if cfg else 1)
            if self.xl:
                projection = self.pipe.text_encoder_2.config.projection_dim
                size = (params.height, params.width)
                time_ids = self.pipe._get_add_time_ids(
                    size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection
                )
                cond["time_ids"] = time_ids.to(self.device).repeat(rows, 1)
            dim = self.pipe.unet.config.time_cond_proj_dim
            if dim is not None:
                # LCM-distilled U-Nets take the guidance scale as an embedding, not as rows.
                scale = torch.tensor(params.guidance_scale - 1).repeat(rows)
                embedding = self.pipe.get_guidance_scale_embedding(scale, embedding_dim=dim)
                cond["timestep_cond"] = embedding.to(device=self.device, dtype=latents.dtype)
        return JobState(
            request=request,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            generators=generators,
            cfg=cfg,
            guidance=params.guidance_scale,
            cond=cond,
            group=(self.name, params.height, params.width),
            step_kwargs=step_kwargs,
            warnings=self.texts.warnings(params),
            after_step=after_step,
            extra={"inpaint": inpaint} if request.mask is not None else {},
        )

    def forward(self, states: list[JobState]) -> list[torch.Tensor]:
        inputs, timesteps = [], []
        for state in states:
            x = torch.cat([state.latents] * 2) if state.cfg else state.latents
            x = state.scheduler.scale_model_input(x, state.timestep)
            if "masked_latents" in state.cond:  # an inpainting checkpoint's extra channels
                x = torch.cat([x, state.cond["mask"], state.cond["masked_latents"]], dim=1)
            inputs.append(x)
            # Per-sample timesteps: the U-Net embeds each row's own (as float, exactly).
            timesteps.append(state.timestep.to(torch.float32).reshape(1).expand(x.shape[0]))
        keys = [key for key in states[0].cond if key not in ("mask", "masked_latents")]
        cond = {key: torch.cat([state.cond[key] for state in states]) for key in keys}
        added = None
        if self.xl:
            added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        plan = [(state.rows, state.request.adapters) for state in states]
        loras = self.adapters.rows.rows(plan, {"unet"}) if self.adapters else nullcontext()
        with torch.inference_mode(), loras:
            output = self.pipe.unet(
                torch.cat(inputs),
                torch.cat(timesteps).to(self.device),
                encoder_hidden_states=cond["embeds"],
                timestep_cond=cond.get("timestep_cond"),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
        pairs = zip(split_rows(output, states), states, strict=True)
        return [guided(rows, state) for rows, state in pairs]

    def decode(self, states: list[JobState]) -> list[list[Image.Image]]:
        with torch.inference_mode():
            latents = torch.cat([state.latents for state in states])
            vae = self.pipe.vae
            upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
            if upcast and self.xl:
                vae.to(dtype=torch.float32)  # SDXL's VAE overflows in float16, as diffusers says
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
            image = vae.decode(latents, return_dict=False)[0]
            if upcast and self.xl:
                vae.to(dtype=torch.float16)
            flagged: list[bool] | None = None
            if self.safety_checker:
                image, flagged = self.pipe.run_safety_checker(image, self.device, latents.dtype)
            denormalize = [True] * image.shape[0] if flagged is None else [not f for f in flagged]
            watermark = getattr(self.pipe, "watermark", None)
            if watermark is not None:
                image = watermark.apply_watermark(image)
            images = self.pipe.image_processor.postprocess(
                image, output_type="pil", do_denormalize=denormalize
            )
        out, start = [], 0
        for state in states:
            end = start + state.request.params.num_images
            if flagged is not None and any(flagged[start:end]):
                hit = [i for i in range(start, end) if flagged[i]]
                state.warnings.append(
                    f"the safety checker flagged image(s) {[i - start for i in hit]}: "
                    "they are blacked out"
                )
            job_images = images[start:end]
            if "inpaint" in state.extra:
                job_images = self.inpainter.overlay(job_images, state.extra["inpaint"])
            out.append(job_images)
            start = end
        return out
