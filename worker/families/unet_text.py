"""Text conditioning for U-Net jobs: diffusers' `encode_prompt` over each distinct text once,
kept by text (and by the text-encoder adapters of the job's LoRA stack, which change what a
text encodes to), with SDXL's zeroed negatives and the prompt-length warnings."""

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline

from app.core.jobs import JobParams
from worker.engine.state import EngineRequest
from worker.families.prompt_cache import Embedding, PromptCache
from worker.lora.batched import RowLoras, Stack

TEXT_ENCODERS = frozenset({"text_encoder", "text_encoder_2"})
TextKey = tuple[str, tuple]  # (text, the text-encoder adapters: (name, sha256, scale) ...)


def _per_image(text: Embedding, n: int) -> Embedding:
    """A text's embedding rows repeated for each of a job's `n` images."""
    return {key: value.repeat(n, *[1] * (value.dim() - 1)) for key, value in text.items()}


def text_stack(stack: Stack) -> Stack:
    """The adapters of a stack that touch a text encoder (the others leave texts alone)."""
    return tuple((weights, scale) for weights, scale in stack if weights.components & TEXT_ENCODERS)


class UNetTexts:
    """Prompt embeddings of U-Net jobs, row-aligned for the denoiser (unconditional first)."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        device: torch.device,
        uses_cfg: Callable[[JobParams], bool],
        cache_size: int,
        loras: RowLoras | None,
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.uses_cfg = uses_cfg
        self.loras = loras
        self.xl = hasattr(pipe, "text_encoder_2")
        self.max_tokens = pipe.tokenizer.model_max_length
        self.prompts: PromptCache = PromptCache(self._encode_keys, cache_size)
        self._stacks: dict[tuple, Stack] = {}  # text-adapter key -> stack, for this call

    def encode(self, requests: list[EngineRequest]) -> list[dict[str, torch.Tensor]]:
        """Each job's conditioning rows: "embeds" and, for SDXL, "text_embeds"."""
        # Each distinct text once (kept ones not again): the prompt, and for guided jobs the
        # negative prompt, "" when none, as diffusers' own call encodes it.
        keys: list[TextKey] = []
        for request in requests:
            params = request.params
            stack = text_stack(request.adapters)
            lora_key = tuple((w.name, w.sha256, scale) for w, scale in stack)
            self._stacks[lora_key] = stack
            keys.append((params.prompt, lora_key))
            if self.uses_cfg(params) and not self._zero_negative(params):
                keys.append((params.negative_prompt or "", lora_key))
        try:
            embedded = iter(self.prompts.get(keys))
        finally:
            self._stacks.clear()  # the weights are not kept past the call
        conds = []
        for request in requests:
            params = request.params
            n = params.num_images
            rows = _per_image(next(embedded), n)
            if self.uses_cfg(params):
                if self._zero_negative(params):
                    # SDXL gives a missing negative prompt zero embeddings, not those of "".
                    uncond = {key: torch.zeros_like(value) for key, value in rows.items()}
                else:
                    uncond = _per_image(next(embedded), n)
                rows = {key: torch.cat([uncond[key], rows[key]]) for key in rows}
            cond = {"embeds": rows["embeds"]}
            if "pooled" in rows:
                cond["text_embeds"] = rows["pooled"]
            conds.append(cond)
        return conds

    def _encode_keys(self, keys: list[TextKey]) -> list[Embedding]:
        """One text-encoder call over all the texts; each text's rows get its adapters."""
        plan: list[tuple[int, Any]] = [(1, self._stacks[lora_key]) for _, lora_key in keys]
        texts = [text for text, _ in keys]
        if self.loras is None or not any(stack for _, stack in plan):
            return self._encode_texts(texts)
        with self.loras.rows(plan, TEXT_ENCODERS):
            return self._encode_texts(texts)

    def _encode_texts(self, texts: list[str]) -> list[Embedding]:
        """diffusers' `encode_prompt` over distinct texts, one embedding each."""
        with torch.inference_mode():
            if self.xl:
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    prompt=texts,
                    device=self.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                )
            else:
                embeds, _ = self.pipe.encode_prompt(texts, self.device, 1, False)
                pooled = None
        out: list[Embedding] = []
        for i in range(len(texts)):
            text = {"embeds": embeds[i : i + 1]}
            if pooled is not None:
                text["pooled"] = pooled[i : i + 1]
            out.append(text)
        return out

    def _zero_negative(self, params: JobParams) -> bool:
        force_zeros = bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))
        return self.xl and params.negative_prompt is None and force_zeros

    def warnings(self, params: JobParams) -> list[str]:
        """What the job should be told about its prompts (cut at the encoder's length)."""
        warnings = []
        for field in ("prompt", "negative_prompt"):
            text = getattr(params, field)
            if text and len(self.pipe.tokenizer(text).input_ids) > self.max_tokens:
                warnings.append(
                    f"{field} is longer than the text encoder's {self.max_tokens} tokens; "
                    "the rest was ignored"
                )
        return warnings
