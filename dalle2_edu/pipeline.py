"""UnCLIP: DALL·E 2's pipeline at toy scale: caption → CLIP text embedding → prior → CLIP image embedding →
decoder (32×32) → upsampler (64×64).

    >>> pipe = UnCLIP.from_pretrained("data/checkpoints")               # doctest: +SKIP
    >>> out = pipe.generate("a red striped mug on a wooden table", n=4, seed=0)   # doctest: +SKIP
    >>> out.images            # 4 PIL images                             # doctest: +SKIP
    >>> out.tensors.shape     # (4, 3, 64, 64) in [-1, 1]                 # doctest: +SKIP

Every stage is its own module (:mod:`~dalle2_edu.clip`, :mod:`~dalle2_edu.prior`, :mod:`~dalle2_edu.decoder`,
:mod:`~dalle2_edu.upsampler`); this file only wires them together, so each can be swapped or skipped
(``use_prior=False`` feeds the text embedding straight to the decoder, the ablation DALL·E 2 reports;
``upsample=False`` stops at 32×32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

CHECKPOINT_FILES = {
    "clip": "clip_tiny.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder32.safetensors",
    "upsampler": "upsampler64.safetensors",
}
"""Stage -> file name inside a checkpoint folder (each with a ``.json`` of config, command and metrics beside it)."""


@dataclass
class Generation:
    """What :meth:`UnCLIP.generate` returns.

    :ivar tensors: (len(prompts) * n, 3, H, W) pictures in [-1, 1], prompt-major (the n pictures of prompt 0 first).
    :ivar prompts: the prompt of each picture, in the same order.
    :ivar image_emb: (len(prompts) * n, d) the image embeddings the decoder was conditioned on.
    :ivar low_res: (len(prompts) * n, 3, 32, 32) the decoder's pictures before upsampling.
    """

    tensors: torch.Tensor
    prompts: list[str]
    image_emb: torch.Tensor
    low_res: torch.Tensor
    timings: dict = field(default_factory=dict)

    @property
    def images(self) -> list:
        """The pictures as PIL images."""
        return to_pil(self.tensors)

    def grid(self, nrow: int | None = None, scale: int = 1):
        """All pictures tiled into one PIL image, ``nrow`` per row (default: n, i.e. one row per prompt)."""
        from PIL import Image

        from dalle2_edu.viz import image_grid

        n_per_prompt = len(self.prompts) // max(len(dict.fromkeys(self.prompts)), 1)
        grid = Image.fromarray(image_grid(self.tensors, nrow=nrow or n_per_prompt).numpy())
        return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale != 1 else grid


def to_pil(images: torch.Tensor) -> list:
    """(N, 3, H, W) in [-1, 1] → N PIL images."""
    from PIL import Image

    arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a.cpu().numpy()) for a in arrays]


def _check_prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, list | tuple) else None
    if prompts is None or not prompts:
        raise ValueError(f"prompt must be a non-empty string or a non-empty list of strings, got {prompt!r}")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"every prompt must be a non-empty string (e.g. 'a red mug'), got {p!r}")
    return prompts


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class UnCLIP:
    """The four trained stages and the settings to run them; build with :meth:`from_pretrained`.

    :param clip: a :class:`dalle2_edu.clip.ProductCLIP`.
    :param prior: ``(DiffusionPrior, GaussianDiffusion)`` or None (then ``use_prior=False`` is forced).
    :param decoder: ``(CLIPDecoder, GaussianDiffusion)``.
    :param upsampler: ``(Upsampler, GaussianDiffusion)`` or None (then pictures stay 32×32).
    """

    def __init__(self, clip, prior, decoder, upsampler=None, device="cpu"):
        self.clip, self.prior, self.decoder, self.upsampler = clip, prior, decoder, upsampler
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path="data/checkpoints", device: str = "cpu", upsampler: bool = True) -> UnCLIP:
        """Load every stage from a folder holding :data:`CHECKPOINT_FILES` (written by ``python -m dalle2_edu
        pretrain`` or shipped in ``data/checkpoints``). A relative path that does not exist from the working
        directory is also tried inside the project (so notebooks can pass "data/checkpoints" from ``notebooks/``).

        :param upsampler: load the 32→64 upsampler too (skipped silently when its file is absent).
        :raises FileNotFoundError: the folder or a required file is missing, with the command that makes it.
        """
        from dalle2_edu.clip import load_clip
        from dalle2_edu.decoder import load_decoder
        from dalle2_edu.prior import load_prior
        from dalle2_edu.upsampler import load_upsampler
        from dalle2_edu.utils import data_dir, get_device

        folder = Path(path)
        if not folder.is_dir() and not folder.is_absolute() and folder.parts[:1] == ("data",):
            folder = data_dir().joinpath(*folder.parts[1:])
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {str(path)!r} does not exist; pass the folder that holds "
                f"{', '.join(CHECKPOINT_FILES.values())} (the shipped ones are in data/checkpoints) or make one with "
                f"`python -m dalle2_edu pretrain --out {path}`"
            )
        missing = [f for k, f in CHECKPOINT_FILES.items() if k != "upsampler" and not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}; run `python -m dalle2_edu pretrain --out {folder}` to train them"
            )
        dev = get_device(device)
        ups = None
        if upsampler and (folder / CHECKPOINT_FILES["upsampler"]).exists():
            ups = load_upsampler(folder / CHECKPOINT_FILES["upsampler"], device=dev)
        return cls(
            load_clip(folder / CHECKPOINT_FILES["clip"], device=dev),
            load_prior(folder / CHECKPOINT_FILES["prior"], device=dev),
            load_decoder(folder / CHECKPOINT_FILES["decoder"], device=dev),
            ups,
            device=dev,
        )

    # ------------------------------------------------------------------------------------------------ stages
    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]):
        """Prompts → (text_emb (B, d), caption tokens (B, L, w), mask (B, L)); unknown words raise ValueError."""
        emb, tokens, mask = self.clip.encode_text_with_tokens(prompts)
        return emb.to(self.device), tokens.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def image_embeddings_from_text(
        self,
        prompts: list[str],
        n: int,
        use_prior: bool = True,
        prior_steps: int = 64,
        prior_guidance_scale: float = 1.0,
        n_candidates: int = 2,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """(len(prompts) * n, d) image embeddings: sampled by the prior (best of ``n_candidates``), or the text
        embedding itself when ``use_prior`` is False."""
        from dalle2_edu.prior import sample_prior

        text_emb, tokens, mask = self.text_embeddings(prompts)
        rep = lambda x: x.repeat_interleave(n, dim=0)  # noqa: E731  (B, ...) -> (B * n, ...)
        if not use_prior or self.prior is None:
            return rep(text_emb)
        prior, gd = self.prior
        if prior.config.token_dim is None:  # a prior conditioned on the text embedding alone
            tokens = mask = None
        else:
            tokens, mask = rep(tokens), rep(mask)
        return sample_prior(
            prior, gd, rep(text_emb), tokens, mask, n_candidates=n_candidates,
            steps=min(prior_steps, gd.num_timesteps), guidance_scale=prior_guidance_scale, seed=seed, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def decode(
        self,
        image_emb: torch.Tensor,
        guidance_scale: float = 3.0,
        steps: int = 25,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """(B, d) image embeddings → (B, 3, 32, 32) pictures in [-1, 1] (DDIM with classifier-free guidance)."""
        from dalle2_edu.decoder import sample_decoder

        decoder, gd = self.decoder
        return sample_decoder(
            decoder, gd, image_emb.to(self.device), steps=min(steps, gd.num_timesteps), guidance_scale=guidance_scale,
            eta=eta, noise=noise, seed=seed, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def upsample(self, low_res: torch.Tensor, steps: int = 10, seed: int = 0, progress: bool = False) -> torch.Tensor:
        """(B, 3, 32, 32) → (B, 3, 64, 64) with the upsampler (bilinear when none is loaded)."""
        if self.upsampler is None:
            return torch.nn.functional.interpolate(low_res, scale_factor=2, mode="bilinear", align_corners=False)
        from dalle2_edu.upsampler import upsample

        model, gd = self.upsampler
        return upsample(model, gd, low_res, steps=min(steps, gd.num_timesteps), seed=seed, progress=progress)

    # ------------------------------------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        n: int = 4,
        guidance_scale: float = 3.0,
        steps: int = 25,
        seed: int = 0,
        use_prior: bool = True,
        prior_steps: int = 64,
        prior_guidance_scale: float = 1.0,
        n_candidates: int = 2,
        upsample: bool = True,
        upsample_steps: int = 10,
        progress: bool = False,
    ) -> Generation:
        """Draw ``n`` pictures for each prompt, all prompts in one batch.

        :param prompt: a caption in the catalogue's words ("a red striped mug on a wooden table"), or a list.
        :param n: pictures per prompt.
        :param guidance_scale: the decoder's classifier-free guidance scale (1: none; 3 is a good default).
        :param steps: the decoder's DDIM steps.
        :param seed: fixes every random draw: same seed, same pictures.
        :param use_prior: sample image embeddings with the prior (True), or feed the text embedding to the decoder.
        :param prior_steps, prior_guidance_scale, n_candidates: the prior's DDIM steps, guidance and best-of-n.
        :param upsample: run the 32→64 upsampler (when loaded).
        :raises ValueError: an empty prompt, a word the model never saw, n < 1, steps < 1, guidance_scale < 0.
        """
        import time

        prompts = _check_prompts(prompt)
        _check_positive_int("n", n)
        _check_positive_int("steps", steps)
        if not isinstance(guidance_scale, int | float) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0 (1 = no guidance), got {guidance_scale!r}")
        times = {}
        start = time.perf_counter()
        image_emb = self.image_embeddings_from_text(
            prompts, n, use_prior, prior_steps, prior_guidance_scale, n_candidates, seed=seed, progress=progress
        )
        times["prior_s"] = time.perf_counter() - start
        start = time.perf_counter()
        low_res = self.decode(image_emb, guidance_scale, steps, seed=seed + 1, progress=progress)
        times["decoder_s"] = time.perf_counter() - start
        start = time.perf_counter()
        images = self.upsample(low_res, upsample_steps, seed=seed + 2, progress=progress) if upsample else low_res
        times["upsampler_s"] = time.perf_counter() - start
        expanded = [p for p in prompts for _ in range(n)]
        return Generation(images.cpu(), expanded, image_emb.cpu(), low_res.cpu(), times)


def prompt_attributes(prompts: Sequence[str]) -> list[dict]:
    """What each prompt asks for, as attribute names (``parse_caption``; attributes it does not mention are absent)."""
    from dalle2_edu.datasets.catalogue import parse_caption

    return [{k: v for k, v in parse_caption(p).items() if v is not None} for p in prompts]
