"""Text conditioning for flow jobs (SD3's three encoders, FLUX's CLIP and T5): diffusers'
`encode_prompt` over every newcomer's prompts in one call, split back into each job's rows
(unconditional first where the job is guided), and the prompt-length warnings."""

from typing import Any

import torch

from app.core.jobs import JobParams
from worker.engine.state import EngineRequest


class FlowTexts:
    """Prompt embeddings of a flow family's jobs."""

    def __init__(self, family: Any) -> None:
        self.family = family
        self.pipe = family.pipe
        self.device = family.device
        self.flux = family.flux
        self.max_sequence_length = family.max_sequence_length

    def encode(self, requests: list[EngineRequest]) -> list[dict[str, torch.Tensor]]:
        """Each job's conditioning rows: "embeds", "pooled" and, for FLUX, "guidance"."""
        return self._flux(requests) if self.flux else self._sd3(requests)

    def _sd3(self, requests: list[EngineRequest]) -> list[dict[str, torch.Tensor]]:
        prompts, negatives = [], []
        for request in requests:
            params = request.params
            prompts += [params.prompt] * params.num_images
            negatives += [params.negative_prompt or ""] * params.num_images
        cfg = any(self.family.uses_cfg(request.params) for request in requests)
        with torch.inference_mode():
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
                negative_prompt=negatives,
                max_sequence_length=self.max_sequence_length,
            )
        conds, start = [], 0
        for request in requests:
            end = start + request.params.num_images
            rows = slice(start, end)
            if self.family.uses_cfg(request.params):
                embeds = torch.cat([neg[rows], pos[rows]])
                text = torch.cat([neg_pooled[rows], pooled[rows]])
            else:
                embeds, text = pos[rows], pooled[rows]
            conds.append({"embeds": embeds, "pooled": text})
            start = end
        return conds

    def _flux(self, requests: list[EngineRequest]) -> list[dict[str, torch.Tensor]]:
        prompts, negatives = [], []
        for request in requests:
            params = request.params
            prompts += [params.prompt] * params.num_images
            if self.family.uses_cfg(params):
                negatives += [params.negative_prompt] * params.num_images
        with torch.inference_mode():
            pos, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length,
            )
            if negatives:
                neg, neg_pooled, _ = self.pipe.encode_prompt(
                    prompt=negatives,
                    device=self.device,
                    num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length,
                )
        conds, start, neg_start = [], 0, 0
        for request in requests:
            n = request.params.num_images
            embeds, text = pos[start : start + n], pooled[start : start + n]
            if self.family.uses_cfg(request.params):
                negative = slice(neg_start, neg_start + n)
                embeds = torch.cat([neg[negative], embeds])
                text = torch.cat([neg_pooled[negative], text])
                neg_start += n
            cond = {"embeds": embeds, "pooled": text}
            if self.family.guidance_embeds:
                # As the pipeline: float32, one per row, unconditional rows alike.
                scale = request.params.guidance_scale
                guidance = torch.full([embeds.shape[0]], scale, dtype=torch.float32)
                cond["guidance"] = guidance.to(self.device)
            conds.append(cond)
            start += n
        return conds

    def warnings(self, params: JobParams) -> list[str]:
        """What the job should be told about its prompts (cut at an encoder's length)."""
        encoders = [(self.pipe.tokenizer, self.pipe.tokenizer.model_max_length, "CLIP")]
        t5 = self.pipe.tokenizer_2 if self.flux else self.pipe.tokenizer_3
        if t5 is not None:
            encoders.append((t5, self.max_sequence_length, "T5"))
        warnings = []
        for field in ("prompt", "negative_prompt"):
            text = getattr(params, field)
            for tokenizer, limit, kind in encoders:
                if text and len(tokenizer(text).input_ids) > limit:
                    warnings.append(
                        f"{field} is longer than the {kind} text encoder's {limit} tokens; "
                        f"{kind} ignored the rest"
                    )
        return warnings
