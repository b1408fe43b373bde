"""UnCLIP: DALL·E 2's pipeline at toy scale: caption → CLIP text embedding → prior → CLIP image embedding →
decoder (32×32) → upsampler (64×64).

    >>> pipe = UnCLIP.from_pretrained("data/checkpoints")               # doctest: +SKIP
    >>> out = pipe.generate("a red striped mug on a wooden table", n=4, seed=0)   # doctest: +SKIP
    >>> out.images            # 4 PIL images                             # doctest: +SKIP
    >>> out.tensors.shape     # (4, 3, 64, 64) in [-1, 1]                 # doctest: +SKIP

Every stage is its own module (:mod:`~dalle2_edu.stages.clip`, :mod:`~dalle2_edu.stages.prior`,
:mod:`~dalle2_edu.stages.decoder`,
:mod:`~dalle2_edu.stages.upsampler`); this file only wires them together, so each can be swapped or skipped
(``use_prior=False`` feeds the text embedding straight to the decoder, the ablation DALL·E 2 reports;
``upsample=False`` stops at 32×32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dalle2_edu.provenance import call_record
from dalle2_edu.validate import (
    check_amounts,
    check_count,
    check_counts,
    check_eta,
    check_guidance_scale,
    check_int,
    check_prompts,
    check_seed,
    offset_seed,
)

CHECKPOINT_FILES = {
    "clip": "clip_tiny.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder32.safetensors",
    "upsampler": "upsampler64.safetensors",
    "upsampler128": "upsampler128.safetensors",
}
"""Stage -> file name inside a checkpoint folder (each with a ``.json`` of config, command and metrics beside it).
The two upsamplers are optional: without them pictures stop at 32×32 (or 64×64)."""

OPTIONAL_FILES = ("upsampler", "upsampler128")

SIZES = (32, 64, 128)
"""The picture sizes the cascade can stop at: the decoder's 32, the first upsampler's 64, the second's 128."""

GENERATE_SAMPLER = "ddpm"
GENERATE_STEPS = 10
GENERATE_UPSAMPLE_STEPS = 5
GENERATE_PRIOR_STEPS = 16
GENERATE_UPSAMPLE_SPACING = "quad"
""":meth:`UnCLIP.generate`'s sampler, its steps for the decoder and for each upsampler, and the prior's DDIM steps:
ancestral DDPM with the model's learned variance, respaced to 10 decoder steps (Improved DDPM's respacing) and 5
upsampler steps (DDIM's quadratic spacing, dense at low noise: :data:`~dalle2_edu.diffusion.sampling.SPACINGS`), and a
prior of 16 steps (best of 2). Each was measured against the settings before it, on the shipped
weights (docs/BENCHMARKS.md §3.5): with the v-prediction decoder, DDPM-10 scores the fidelity and FID that DDPM-20
does (32×32, 348 pictures: FID 4.42 against 4.23, floor 5.29); 5 upsampler steps on the quadratic spacing restore
as much as 10 evenly spaced ones and leave flat backgrounds as smooth (5 evenly spaced ones leave grain); 16 prior
steps sample embeddings as close to the caption's pictures as
64 (cosine 0.9835 against 0.9839, standard error 0.0004). Together ``generate`` is 2.1× faster than on 2026-12-04
(DDPM-20, 10 upsampler steps, 64 prior steps) and 2.3× faster than on 2026-12-03 (DDIM-25). The edits (variations,
interpolation, text diffs, inpainting) and animations keep DDIM: their inversion and their shared starting noise need
a deterministic sampler. The CLI's ``generate`` and ``demo``, the playground and the explorers read these."""

STOCHASTIC_SAMPLERS = ("ddpm",)
"""Samplers that draw fresh noise at every step: :meth:`UnCLIP.generate` decodes them block by block, each block from
its own seed (so a picture still does not depend on ``batch_size``)."""

SEED_BLOCK = 64
""":meth:`UnCLIP.generate`'s unit of randomness. The pictures of a call are numbered prompt-major (the n pictures of
prompt 0 first) and cut into blocks of ``SEED_BLOCK``; block k draws its prior, decoder and upsampler noise from
``block_seed(seed, k)`` + 0, + 1, + 2. So a picture does not depend on ``batch_size`` (how many go through the
decoder at once), and a call of up to ``SEED_BLOCK`` pictures is exactly the stages run by hand with ``seed``,
``seed + 1``, ``seed + 2`` (and the same ``sampler``: :meth:`UnCLIP.decode` and :meth:`UnCLIP.upsample` default
to DDIM, ``generate`` to :data:`GENERATE_SAMPLER`). The prior and the upsampler run one whole block at a time (they
draw their noise from a seed, for the whole batch they are given), so they hold at most ``SEED_BLOCK`` pictures
whatever ``batch_size``."""


def block_seed(seed: int, block: int) -> int:
    """The seed of picture block ``block`` (see :data:`SEED_BLOCK`) of a call seeded ``seed``: ``seed`` itself for
    block 0, so small calls draw what they always drew; for later blocks a 63-bit hash of ``(seed, block)``, so no
    block of one seed repeats a block of another (``seed + block`` would: seed 1's block 0 = seed 0's block 1)."""
    if block == 0:
        return seed
    return int(np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class Generation:
    """What :meth:`UnCLIP.generate` returns (and each chunk :meth:`UnCLIP.generate_batches` yields).

    :ivar tensors: (len(prompts) * n, 3, H, W) pictures in [-1, 1], prompt-major (the n pictures of prompt 0 first).
    :ivar prompts: the prompt of each picture, in the same order.
    :ivar image_emb: (len(prompts) * n, d) the image embeddings the decoder was conditioned on.
    :ivar low_res: (len(prompts) * n, 3, 32, 32) the decoder's pictures before upsampling.
    :ivar timings: seconds spent in each stage (``prior_s``, ``decoder_s``, ``upsampler_s``).
    :ivar nrow: pictures per row of :meth:`grid` (``n`` for :meth:`UnCLIP.generate`); None: the length of the first
        run of equal prompts.
    :ivar start: the index of the first picture within the whole call (a chunk of ``generate_batches`` starts there;
        picture ``start + j`` is picture ``(start + j) % n`` of prompt ``(start + j) // n``).
    :ivar settings: how the call was made (operation, seed, steps, ..., the checkpoints' SHA-256), shared by every
        chunk of a call; :meth:`metadata` and :meth:`save` write it into each picture (:mod:`dalle2_edu.provenance`).
    """

    tensors: torch.Tensor
    prompts: list[str]
    image_emb: torch.Tensor
    low_res: torch.Tensor
    timings: dict = field(default_factory=dict)
    nrow: int | None = None
    start: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def images(self) -> list:
        """The pictures as PIL images."""
        return to_pil(self.tensors)

    def metadata(self, j: int) -> dict:
        """What picture ``j`` was drawn from, JSON-ready (:func:`dalle2_edu.provenance.picture_metadata`). For a
        :meth:`UnCLIP.generate` picture it is enough for ``python -m dalle2_edu generate --from`` to redraw it."""
        from dalle2_edu.provenance import picture_metadata

        return picture_metadata(self, j)

    def save(self, folder, indices: Sequence[int] | None = None) -> list[Path]:
        """Write pictures ``indices`` (default: all) as PNGs into ``folder`` (created if missing), each carrying its
        :meth:`metadata`; named ``{row}_{column}_{prompt}.png`` as ``python -m dalle2_edu generate`` names them.

        :return: the paths written.
        """
        from dalle2_edu.provenance import save_generation

        return save_generation(self, folder, indices)

    def grid(self, nrow: int | None = None, scale: int = 1):
        """All pictures tiled into one PIL image, ``nrow`` per row (default: :attr:`nrow`, i.e. one row per prompt)."""
        from PIL import Image

        from dalle2_edu.viz import image_grid

        if nrow is None:
            nrow = self.nrow or next((i for i, p in enumerate(self.prompts) if p != self.prompts[0]), len(self.prompts))
        nrow = check_count("nrow", nrow)
        scale = check_count("scale", scale)
        grid = Image.fromarray(image_grid(self.tensors, nrow=nrow).numpy())
        return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale != 1 else grid


def to_pil(images: torch.Tensor) -> list:
    """(N, 3, H, W) in [-1, 1] → N PIL images."""
    from PIL import Image

    arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a.cpu().numpy()) for a in arrays]


_check_prompts = check_prompts  # the name this module used before validate.py


def _check_batch(name: str, x: torch.Tensor) -> torch.Tensor:
    """A batch (B, ...) with B >= 1: an empty one would draw nothing, silently."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.ndim > 1 and x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch, shape {tuple(x.shape)}: pass at least one row")
    return x


class UnCLIP:
    """The four trained stages and the settings to run them; build with :meth:`from_pretrained`.

    :param clip: a :class:`dalle2_edu.stages.clip.ProductCLIP`.
    :param prior: ``(DiffusionPrior, GaussianDiffusion)`` or None (then ``use_prior=False`` is forced).
    :param decoder: ``(CLIPDecoder, GaussianDiffusion)``.
    :param upsampler: ``(Upsampler, GaussianDiffusion)`` or None (then pictures stay 32×32).
    :param upsampler128: the second upsampler, 64 → 128, or None (``size=128`` is then refused).
    """

    def __init__(self, clip, prior, decoder, upsampler=None, device="cpu", upsampler128=None):
        self.clip, self.prior, self.decoder, self.upsampler = clip, prior, decoder, upsampler
        self.upsampler128 = upsampler128
        self.device = torch.device(device)
        self.checkpoint_files: dict[str, Path] = {}  # stage -> weights file (from_pretrained fills it; provenance)

    @classmethod
    def from_pretrained(cls, path="data/checkpoints", device: str = "cpu", upsampler: bool = True) -> UnCLIP:
        """Load every stage from a folder holding :data:`CHECKPOINT_FILES` (written by ``python -m dalle2_edu
        train all`` or shipped in ``data/checkpoints``). A relative path that does not exist from the working
        directory is also tried inside the project (so notebooks can pass "data/checkpoints" from ``notebooks/``).

        :param upsampler: load the 32→64 and 64→128 upsamplers too (each skipped silently when its file is absent).
        :raises FileNotFoundError: the folder or a required file is missing, with the command that makes it.
        """
        from dalle2_edu.stages.clip import load_clip
        from dalle2_edu.stages.decoder import load_decoder
        from dalle2_edu.stages.prior import load_prior
        from dalle2_edu.stages.upsampler import load_upsampler
        from dalle2_edu.utils import data_dir, get_device

        folder = Path(path)
        if not folder.is_dir() and not folder.is_absolute() and folder.parts[:1] == ("data",):
            folder = data_dir().joinpath(*folder.parts[1:])
        if not folder.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {str(path)!r} does not exist; pass the folder that holds "
                f"{', '.join(CHECKPOINT_FILES.values())} (the shipped ones are in data/checkpoints) or make one with "
                f"`python -m dalle2_edu train all --out {path}`"
            )
        missing = [f for k, f in CHECKPOINT_FILES.items() if k not in OPTIONAL_FILES and not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}; run `python -m dalle2_edu train all --out {folder}` to train "
                "them"
            )
        from dalle2_edu.recipes.runner import check_checkpoint_set

        check_checkpoint_set(folder)  # a prior or decoder trained against another CLIP than this one: refuse
        dev = get_device(device)
        ups = ups128 = None
        if upsampler and (folder / CHECKPOINT_FILES["upsampler"]).exists():
            ups = load_upsampler(folder / CHECKPOINT_FILES["upsampler"], device=dev)
        if ups and (folder / CHECKPOINT_FILES["upsampler128"]).exists():
            ups128 = load_upsampler(folder / CHECKPOINT_FILES["upsampler128"], device=dev)
        pipe = cls(
            load_clip(folder / CHECKPOINT_FILES["clip"], device=dev),
            load_prior(folder / CHECKPOINT_FILES["prior"], device=dev),
            load_decoder(folder / CHECKPOINT_FILES["decoder"], device=dev),
            ups,
            device=dev,
            upsampler128=ups128,
        )
        loaded = {"upsampler": ups, "upsampler128": ups128}
        pipe.checkpoint_files = {k: folder / f for k, f in CHECKPOINT_FILES.items() if loaded.get(k, True)}
        return pipe

    # ------------------------------------------------------------------------------------------------ stages
    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]):
        """Prompts → (text_emb (B, d), caption tokens (B, L, w), mask (B, L)); unknown words raise ValueError."""
        emb, tokens, mask = self.clip.encode_text_with_tokens(prompts)
        return emb.to(self.device), tokens.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def _block_embeddings(
        self, prompts, n, start, stop, seed, use_prior, prior_steps, prior_guidance_scale, n_candidates, progress
    ) -> torch.Tensor:
        """(stop - start, d) image embeddings of pictures ``start .. stop - 1`` (one :data:`SEED_BLOCK`), the prior
        seeded with ``seed``. Only the prompts those pictures show are encoded."""
        from dalle2_edu.stages.prior import sample_prior

        first, last = start // n, (stop - 1) // n
        text_emb, tokens, mask = self.text_embeddings(prompts[first : last + 1])
        rows = torch.arange(start, stop, device=text_emb.device) // n - first  # the prompt of each picture
        pick = lambda x: x.index_select(0, rows)  # noqa: E731  (prompts, ...) -> (pictures, ...)
        if not use_prior or self.prior is None:
            return pick(text_emb)
        prior, gd = self.prior
        if prior.config.token_dim is None:  # a prior conditioned on the text embedding alone
            tokens = mask = None
        else:
            tokens, mask = pick(tokens), pick(mask)
        return sample_prior(
            prior, gd, pick(text_emb), tokens, mask, n_candidates=n_candidates,
            steps=min(prior_steps, gd.num_timesteps), guidance_scale=prior_guidance_scale, seed=seed, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def image_embeddings_from_text(
        self,
        prompts: list[str],
        n: int,
        use_prior: bool = True,
        prior_steps: int = GENERATE_PRIOR_STEPS,
        prior_guidance_scale: float = 1.0,
        n_candidates: int = 2,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """(len(prompts) * n, d) image embeddings: sampled by the prior (best of ``n_candidates``), or the text
        embedding itself when ``use_prior`` is False; exactly those :meth:`generate` conditions the decoder on.

        The prior runs once per :data:`SEED_BLOCK` of pictures, seeded by :func:`block_seed` (``seed`` itself when
        there are at most ``SEED_BLOCK`` pictures).
        """
        prompts = check_prompts(prompts)
        n, prior_steps, n_candidates = check_counts(n=n, prior_steps=prior_steps, n_candidates=n_candidates)
        prior_guidance_scale = check_guidance_scale(prior_guidance_scale, "prior_guidance_scale")
        seed = check_seed(seed)
        blocks = _blocks(len(prompts) * n)
        return torch.cat([
            self._block_embeddings(prompts, n, a, b, block_seed(seed, k), use_prior, prior_steps, prior_guidance_scale,
                                   n_candidates, progress)
            for k, (a, b) in enumerate(blocks)
        ])  # fmt: skip

    def _start_noise(self, count: int, seed: int) -> torch.Tensor:
        """(count, 3, s, s) starting noise x_T for the decoder, drawn on the CPU from ``seed`` exactly as the sampler
        draws it when it is given only the seed."""
        s = self.image_size
        return torch.randn(count, 3, s, s, generator=torch.Generator().manual_seed(seed))

    def decoder_start_noise(self, total: int, seed: int = 0) -> torch.Tensor:
        """(total, 3, s, s) the decoder's starting noise x_T for pictures 0 .. total - 1 of a :meth:`generate` call
        seeded ``seed`` (block by block, see :data:`SEED_BLOCK`), on the CPU. With ``decode(..., noise=...)`` it
        reproduces ``generate``'s pictures stage by stage (the explorer of :mod:`~dalle2_edu.widgets` does so)."""
        total, seed = check_count("total", total), check_seed(seed)
        blocks = enumerate(_blocks(total))
        return torch.cat([self._start_noise(b - a, offset_seed(block_seed(seed, k), 1)) for k, (a, b) in blocks])

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
        spacing: str = "even",
        sampler: str = "ddim",
    ) -> torch.Tensor:
        """(B, d) image embeddings → (B, 3, 32, 32) pictures in [-1, 1] (DDIM with classifier-free guidance).

        :param guidance_scale: finite, >= 0 (:func:`~dalle2_edu.validate.check_guidance_scale`).
        :param eta: DDIM's η in [0, 1] (:func:`~dalle2_edu.validate.check_eta`).
        :param spacing: which ``steps`` of the T original ones to visit: ``"even"``, Improved DDPM's rule from t = 0
            to T - 1 (:func:`~dalle2_edu.diffusion.sampling.respaced`; what :meth:`generate` uses), or ``"ddim"``,
            DDIM's stride that stops one stride short of T (:func:`~dalle2_edu.edits.inversion_timesteps`): the one
            to decode noise from :meth:`invert` with.
        :param sampler: one of :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`; for the ODE solvers (``"dpmpp2m"``,
            ``"euler"``, ``"heun"``) ``steps`` counts network calls on the full process and ``spacing`` must stay
            ``"even"``; ``eta`` applies to ``"ddim"`` only.
        """
        from dalle2_edu.diffusion.sampling import ODE_SAMPLERS, check_sampler, max_steps
        from dalle2_edu.stages.decoder import sample_decoder

        guidance_scale, eta = check_guidance_scale(guidance_scale), check_eta(eta)
        steps, seed, sampler = check_count("steps", steps), check_seed(seed), check_sampler(sampler)
        _check_batch("image_emb", image_emb)
        decoder, full = self.decoder
        if sampler in ODE_SAMPLERS:  # the solver picks its own noise levels on the full process
            if spacing != "even":
                raise ValueError(f"spacing={spacing!r} applies to the ddim and ddpm samplers, not to {sampler!r}")
            gd, steps = full, min(steps, max_steps(sampler, full.num_timesteps))
        else:
            gd = self._decoder_process(steps, spacing)
            steps = gd.num_timesteps
        return sample_decoder(
            decoder, gd, image_emb.to(self.device), steps=steps, sampler=sampler, guidance_scale=guidance_scale,
            eta=eta, noise=noise, seed=seed, progress=progress,
        )  # fmt: skip

    def _decoder_process(self, steps: int, spacing: str = "even"):
        """The decoder's process respaced to ``steps`` (at most T) by ``spacing`` (see :meth:`decode`)."""
        from dalle2_edu.diffusion.sampling import respaced
        from dalle2_edu.edits import inversion_timesteps

        gd = self.decoder[1]
        steps = min(steps, gd.num_timesteps)
        if spacing == "even":
            return respaced(gd, steps)
        if spacing == "ddim":
            return gd.respace(inversion_timesteps(gd.num_timesteps, steps))
        raise ValueError(f"spacing must be 'even' or 'ddim', got {spacing!r}")

    @torch.no_grad()
    def upsample(self, low_res: torch.Tensor, steps: int = 10, seed: int = 0, progress: bool = False,
                 sampler: str = "ddim", size: int | None = None, spacing: str = "even") -> torch.Tensor:  # fmt: skip
        """(B, 3, 32, 32) → (B, 3, 64, 64) with the upsampler (bilinear when none is loaded), and on to
        (B, 3, 128, 128) with the second one when ``size=128`` (its noise from ``seed + 1``); ``sampler`` and
        ``steps`` (for each stage) as for :meth:`decode`; ``spacing`` (``"even"`` or ``"quad"``, for ``ddim`` and
        ``ddpm``) as for :func:`~dalle2_edu.stages.upsampler.upsample`."""
        from dalle2_edu.diffusion.sampling import check_sampler, max_steps

        steps, seed, sampler = check_count("steps", steps), check_seed(seed), check_sampler(sampler)
        size = self.check_size(size)
        if size == self.sizes[0]:
            raise ValueError(f"size={size} is the decoder's own size: there is nothing to upsample")
        if self.upsampler is None:
            return torch.nn.functional.interpolate(low_res, scale_factor=2, mode="bilinear", align_corners=False)
        from dalle2_edu.stages.upsampler import upsample

        out = low_res
        stages = [self.upsampler] + ([self.upsampler128] if size == self.sizes[-1] and len(self.sizes) == 3 else [])
        for i, (model, gd) in enumerate(stages):
            out = upsample(model, gd, out, steps=min(steps, max_steps(sampler, gd.num_timesteps)),
                           seed=offset_seed(seed, i), progress=progress, sampler=sampler, spacing=spacing)  # fmt: skip
        return out

    @property
    def sizes(self) -> list[int]:
        """The sizes this pipeline's cascade can stop at: the decoder's (32), twice it (the upsampler, or bilinear
        when none is loaded) and, with the second upsampler, four times it (:data:`SIZES` for the shipped one)."""
        s = self.image_size
        return [s, 2 * s] + ([4 * s] if self.upsampler is not None and self.upsampler128 is not None else [])

    def check_size(self, size: int | None, upsample: bool = True) -> int:
        """The size a call stops at: ``size`` checked against :attr:`sizes`, or (None) twice the decoder's when
        ``upsample`` else the decoder's own."""
        sizes = self.sizes
        if size is None:
            return sizes[1] if upsample else sizes[0]
        if isinstance(size, bool) or not isinstance(size, int) or size not in [*sizes, 4 * sizes[0]]:
            raise ValueError(f"size must be one of {', '.join(map(str, sizes))} (where this pipeline's cascade can "
                             f"stop), got {size!r}")  # fmt: skip
        if size not in sizes:
            raise ValueError(
                f"size={size} needs both upsamplers, and this pipeline has no "
                f"{'upsampler128' if self.upsampler is not None else 'upsampler'}; the shipped ones are in "
                "data/checkpoints, or train one with `python -m dalle2_edu train upsampler128 --out FOLDER`"
            )
        return size

    # ------------------------------------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        n: int = 4,
        guidance_scale: float = 3.0,
        steps: int = GENERATE_STEPS,
        seed: int = 0,
        use_prior: bool = True,
        prior_steps: int = GENERATE_PRIOR_STEPS,
        prior_guidance_scale: float = 1.0,
        n_candidates: int = 2,
        upsample: bool = True,
        upsample_steps: int = GENERATE_UPSAMPLE_STEPS,
        progress: bool = False,
        batch_size: int = SEED_BLOCK,
        sampler: str = GENERATE_SAMPLER,
        size: int | None = None,
        upsample_spacing: str | None = None,
    ) -> Generation:
        """Draw ``n`` pictures for each prompt, ``batch_size`` pictures at a time.

        :param prompt: a caption in the catalogue's words ("a red striped mug on a wooden table"), or a list; a list
            may repeat a prompt (each copy gets its own row of ``n`` pictures).
        :param n: pictures per prompt.
        :param guidance_scale: the decoder's classifier-free guidance scale (0: unconditional, 1: none; 3 is a good
            default; :func:`~dalle2_edu.validate.check_guidance_scale`).
        :param steps: the decoder's steps: DDIM's or DDPM's, network calls for the ODE solvers (see ``sampler``).
        :param seed: fixes every random draw: same seed, same pictures (an int in [0, 2**63 - 1]).
        :param use_prior: sample image embeddings with the prior (True), or feed the text embedding to the decoder.
        :param prior_steps, prior_guidance_scale, n_candidates: the prior's DDIM steps, guidance and best-of-n.
        :param upsample: run the 32→64 upsampler (when loaded).
        :param batch_size: pictures per decoder batch: working memory grows with it, not with n. The pictures do not
            depend on it (see :data:`SEED_BLOCK`). A stochastic sampler (:data:`STOCHASTIC_SAMPLERS`, the default
            ``"ddpm"``) decodes one seed block (at most :data:`SEED_BLOCK` pictures) at a time instead.
        :param sampler: the decoder's and upsampler's sampler, one of :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`
            (``steps`` and ``upsample_steps`` then count network calls for the ODE solvers; see :meth:`decode`);
            the default, ancestral DDPM with 10 and 5 steps, and why: :data:`GENERATE_SAMPLER`.
        :param size: stop the cascade at 32 (the decoder), 64 (the first upsampler) or 128 (the second; needs
            ``upsampler128.safetensors``); None: 64, or 32 with ``upsample=False``.
        :param upsample_spacing: which steps the upsamplers visit (``"even"`` or ``"quad"``,
            :data:`~dalle2_edu.diffusion.sampling.SPACINGS`); None: :data:`GENERATE_UPSAMPLE_SPACING` for ``ddim``
            and ``ddpm``, ``"even"`` for the ODE solvers (which pick their own steps).
        :return: all the pictures in one :class:`Generation`; for many pictures use :meth:`generate_batches`, which
            hands them over batch by batch instead of holding them all.
        :raises ValueError: an empty prompt, a word the model never saw, n < 1, steps < 1, a guidance scale that is
            negative or not finite, a seed outside [0, 2**63 - 1].
        """
        chunks = self.generate_batches(
            prompt, n, guidance_scale, steps, seed, use_prior, prior_steps, prior_guidance_scale, n_candidates,
            upsample, upsample_steps, progress, batch_size, sampler=sampler, size=size,
            upsample_spacing=upsample_spacing,
        )  # fmt: skip
        first = next(chunks)
        prompts = check_prompts(prompt)
        total = len(prompts) * first.nrow

        def room(x: torch.Tensor) -> torch.Tensor:  # the whole result, filled chunk by chunk (no second copy)
            return torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device)

        tensors, image_emb, low_res = room(first.tensors), room(first.image_emb), room(first.low_res)
        timings = dict.fromkeys(first.timings, 0.0)
        for chunk in _chain(first, chunks):
            stop = chunk.start + len(chunk.prompts)
            tensors[chunk.start : stop] = chunk.tensors
            image_emb[chunk.start : stop] = chunk.image_emb
            low_res[chunk.start : stop] = chunk.low_res
            for key, seconds in chunk.timings.items():
                timings[key] = timings.get(key, 0.0) + seconds
        expanded = [p for p in prompts for _ in range(first.nrow)]
        return Generation(tensors, expanded, image_emb, low_res, timings, nrow=first.nrow, settings=first.settings)

    def generate_batches(
        self,
        prompt: str | Sequence[str],
        n: int = 4,
        guidance_scale: float = 3.0,
        steps: int = GENERATE_STEPS,
        seed: int = 0,
        use_prior: bool = True,
        prior_steps: int = GENERATE_PRIOR_STEPS,
        prior_guidance_scale: float = 1.0,
        n_candidates: int = 2,
        upsample: bool = True,
        upsample_steps: int = GENERATE_UPSAMPLE_STEPS,
        progress: bool = False,
        batch_size: int = SEED_BLOCK,
        first_picture: int = 0,
        sampler: str = GENERATE_SAMPLER,
        size: int | None = None,
        upsample_spacing: str | None = None,
    ) -> Iterator[Generation]:
        """:meth:`generate`, handed over as it goes: yields :class:`Generation` chunks of at most ``batch_size``
        consecutive pictures (prompt-major; ``chunk.start`` is the index of a chunk's first picture), so pictures can
        be written to disk as they come and memory stays flat however large ``n`` is.

            >>> for chunk in pipe.generate_batches("a red mug", n=1000, batch_size=32):  # doctest: +SKIP
            ...     for j, image in enumerate(chunk.images):
            ...         image.save(f"out/{chunk.start + j:05d}.png")

        The arguments are those of :meth:`generate` and are checked here, before the first picture is drawn (an
        unknown word fails at this call, not at the first ``next``). Concatenated, the chunks are exactly what
        :meth:`generate` returns with the same arguments, for any ``batch_size``.

        :param first_picture: hand over pictures ``first_picture`` … only: the seed groups before it (whole
            :data:`SEED_BLOCK` blocks, or ``batch_size // SEED_BLOCK`` of them) are not drawn, and the group holding
            it is drawn whole, so every picture handed over is exactly that picture of the full call (this is how
            ``python -m dalle2_edu generate --from`` redraws one picture, :func:`dalle2_edu.provenance.redraw`).
        """
        prompts = check_prompts(prompt)
        n, steps, prior_steps, upsample_steps, n_candidates, batch_size = check_counts(
            n=n, steps=steps, prior_steps=prior_steps, upsample_steps=upsample_steps, n_candidates=n_candidates,
            batch_size=batch_size,
        )  # fmt: skip
        guidance_scale = check_guidance_scale(guidance_scale)
        prior_guidance_scale = check_guidance_scale(prior_guidance_scale, "prior_guidance_scale")
        from dalle2_edu.diffusion.sampling import check_sampler

        seed, sampler = check_seed(seed), check_sampler(sampler)
        upsample_spacing = _upsample_spacing(upsample_spacing, sampler)
        size = self.check_size(size, upsample)
        upsample = size > self.sizes[0]
        first_picture = check_int("first_picture", first_picture, low=0, high=len(prompts) * n - 1,
                                  hint=f"(a picture of this call: {len(prompts)} prompt(s) × n = {n})")  # fmt: skip
        self.clip.tokenize(prompts)  # unknown words fail now, with the list of known ones
        settings = call_record(self, "generate", prompts=prompts, n=n, seed=seed, guidance_scale=guidance_scale,
                               steps=steps, use_prior=use_prior, prior_steps=prior_steps,
                               prior_guidance_scale=prior_guidance_scale, n_candidates=n_candidates, upsample=upsample,
                               upsample_steps=upsample_steps, batch_size=batch_size, sampler=sampler,
                               size=size, upsample_spacing=upsample_spacing)  # fmt: skip
        prior_kw = dict(use_prior=use_prior, prior_steps=prior_steps, prior_guidance_scale=prior_guidance_scale,
                        n_candidates=n_candidates, progress=progress)  # fmt: skip
        return self._generate_chunks(prompts, n, guidance_scale, steps, seed, prior_kw, upsample, upsample_steps,
                                     progress, batch_size, settings, first_picture, sampler, size,
                                     upsample_spacing)  # fmt: skip

    @torch.no_grad()
    def _generate_chunks(
        self, prompts, n, guidance_scale, steps, seed, prior_kw, upsample, upsample_steps, progress, batch_size,
        settings=None, first_picture=0, sampler="ddim", size=None, upsample_spacing="even",
    ) -> Iterator[Generation]:  # fmt: skip
        """The work of :meth:`generate_batches`, after its checks. Blocks of :data:`SEED_BLOCK` pictures are taken a
        group at a time (several blocks when ``batch_size`` holds several): prior per block, decoder in batches of
        ``batch_size`` with the blocks' own starting noise, upsampler per block; then the group is handed over in
        chunks of ``batch_size``. Groups ending before ``first_picture`` are skipped, pictures before it dropped."""
        import time

        from tqdm.auto import tqdm

        blocks = list(enumerate(_blocks(len(prompts) * n)))  # [(k, (start, stop)), ...]
        per_group = max(1, batch_size // SEED_BLOCK)
        bar = tqdm(total=len(prompts) * n - first_picture, desc="pictures", unit="picture", disable=not progress,
                   leave=False)  # fmt: skip
        try:
            for g in range(0, len(blocks), per_group):
                group = blocks[g : g + per_group]
                if group[-1][1][1] <= first_picture:
                    continue  # drawn by no one: its pictures come before the first one asked for
                seeds = {k: block_seed(seed, k) for k, _ in group}  # prior: + 0, decoder: + 1, upsampler: + 2
                start = group[0][1][0]
                t0 = time.perf_counter()
                image_emb = torch.cat([
                    self._block_embeddings(prompts, n, a, b, seeds[k], **prior_kw) for k, (a, b) in group
                ])  # fmt: skip
                t1 = time.perf_counter()
                if sampler in STOCHASTIC_SAMPLERS:  # fresh noise at every step: each block from its own seed
                    low_res = torch.cat([
                        self.decode(image_emb[a - start : b - start], guidance_scale, steps,
                                    seed=offset_seed(seeds[k], 1), progress=progress, sampler=sampler)
                        for k, (a, b) in group
                    ])  # fmt: skip
                else:  # deterministic given x_T: the blocks' starting noise, decoded batch_size at a time
                    noise = torch.cat([self._start_noise(b - a, offset_seed(seeds[k], 1)) for k, (a, b) in group])
                    low_res = torch.cat([
                        self.decode(image_emb[j : j + batch_size], guidance_scale, steps,
                                    noise=noise[j : j + batch_size], progress=progress, sampler=sampler)
                        for j in range(0, len(image_emb), batch_size)
                    ])  # fmt: skip
                t2 = time.perf_counter()
                if upsample:
                    images = torch.cat([
                        self.upsample(low_res[a - start : b - start], upsample_steps, offset_seed(seeds[k], 2),
                                      progress, sampler, size, upsample_spacing)
                        for k, (a, b) in group
                    ])  # fmt: skip
                else:
                    images = low_res
                times = {"prior_s": t1 - t0, "decoder_s": t2 - t1, "upsampler_s": time.perf_counter() - t2}
                images, image_emb, low_res = images.cpu(), image_emb.cpu(), low_res.cpu()
                for chunk in range(0, len(images), batch_size):
                    j, stop = max(chunk, first_picture - start), min(chunk + batch_size, len(images))
                    if j >= stop:
                        continue  # the pictures before first_picture are not handed over
                    a = start + j
                    labels = [prompts[i // n] for i in range(a, start + stop)]
                    yield Generation(images[j:stop], labels, image_emb[j:stop], low_res[j:stop], times, nrow=n,
                                     start=a, settings=settings or {})  # fmt: skip
                    times = dict.fromkeys(times, 0.0)  # a group's seconds are counted once, with its first chunk
                    bar.update(len(labels))
        finally:
            bar.close()

    # ------------------------------------------------------------------------------------------------ edits
    @property
    def image_size(self) -> int:
        """Side of the decoder's pictures (32 for the shipped one); edits work at this size, then upsample."""
        return self.decoder[0].unet.config.image_size

    def _prepare(self, image, name: str = "image") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A user's picture(s) → (pictures at their own size (B, 3, H, H), at the decoder's size (B, 3, s, s), their
        CLIP image embeddings (B, d)), on the pipeline's device. See :func:`dalle2_edu.edits.images_to_tensor` for
        the formats taken."""
        import warnings

        from dalle2_edu.edits import fit_size, images_to_tensor

        x = images_to_tensor(image, name).to(self.device)
        low = fit_size(x, self.image_size, name)  # warns once when the size needs a resize
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = self.clip.encode_image(fit_size(x, self.clip.config.image_size, name)).to(self.device)
        return x, low, z

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """CLIP image embeddings (B, d) of a user's picture(s), at the diffusion scale (norm √d)."""
        return self._prepare(image)[2]

    @torch.no_grad()
    def invert(
        self,
        low_res: torch.Tensor,
        image_emb: torch.Tensor,
        steps: int = 25,
        progress: bool = False,
        guidance_scale: float = 1.0,
    ):
        """DDIM inversion: the starting noise x_T from which the decoder, conditioned on ``image_emb`` and run
        deterministically (η = 0) on the same steps, draws (approximately) ``low_res`` again. Decode it with
        ``decode(..., noise=x_T, spacing="ddim")``.

        The steps are DDIM's stride (:func:`~dalle2_edu.edits.inversion_timesteps`), not :meth:`generate`'s even
        spacing, whose last step at ᾱ ≈ 2·10⁻⁹ multiplies the inversion's error by ~20 000 when decoding starts.

        Measured on 16 test pictures with the shipped decoder, 25 steps, decoded at guidance 3: MSE 0.038 inverting at
        scale 1, 0.025 at scale 3 (0.14 and 0.21 on the even spacing; 0.48 from fresh noise). The edits invert at 1:
        the noise then serves any decoding guidance and any edited embedding, at one network pass per step.

        :param guidance_scale: the classifier-free guidance the inversion runs with (1: the plain conditional model).
        """
        from dalle2_edu.stages.decoder import guided_decoder

        steps, guidance_scale = check_count("steps", steps), check_guidance_scale(guidance_scale)
        _check_batch("low_res", low_res)
        _check_batch("image_emb", image_emb)
        decoder, _ = self.decoder
        net = guided_decoder(decoder, image_emb.to(self.device), guidance_scale)
        return self._decoder_process(steps, "ddim").ddim_invert(net, low_res.to(self.device), progress=progress)

    def _finish(
        self, low_res, labels, image_emb, upsample, upsample_steps, seed, progress, times, nrow, settings=None
    ) -> Generation:
        """Upsample an edit's pictures (from ``seed + 2``, as :meth:`generate` does) and wrap them up, with
        ``settings`` (:func:`~dalle2_edu.provenance.call_record`: the edit and its arguments) for their metadata."""
        import time

        start = time.perf_counter()
        images = low_res
        if upsample:
            images = self.upsample(low_res, upsample_steps, seed=offset_seed(seed, 2), progress=progress)
        times["upsampler_s"] = time.perf_counter() - start
        return Generation(images.cpu(), labels, image_emb.cpu(), low_res.cpu(), times, nrow=nrow,
                          settings=settings or {})  # fmt: skip

    @torch.no_grad()
    def variations(
        self,
        image,
        n: int = 4,
        eta: float = 0.8,
        guidance_scale: float = 3.0,
        steps: int = 25,
        invert: bool = True,
        seed: int = 0,
        upsample: bool = True,
        upsample_steps: int = 10,
        progress: bool = False,
    ) -> Generation:
        """``n`` variations of each picture: the same CLIP image embedding decoded again (DALL·E 2 §3.1).

        The picture is encoded by CLIP; the decoder starts from the picture's DDIM-inverted noise (:meth:`invert`) and
        samples on the inversion's steps with η = ``eta`` > 0, so the variations keep what CLIP saw (category, colour)
        while the details differ. η = 0 with inversion gives back (approximately) the picture itself.

        :param image: PIL image(s), uint8 array, or tensor (B, 3, H, H) in [-1, 1] (e.g. ``generate(...).tensors``).
        :param eta: DDIM's η in [0, 1] (:func:`~dalle2_edu.validate.check_eta`).
        :param guidance_scale, steps, seed: as for :meth:`generate`.
        :return: a :class:`Generation` with ``n`` pictures per input picture, input-major (one grid row per input
            picture); ``prompts`` holds labels.
        """
        import time

        n, steps, upsample_steps = check_counts(n=n, steps=steps, upsample_steps=upsample_steps)
        eta, guidance_scale, seed = check_eta(eta), check_guidance_scale(guidance_scale), check_seed(seed)
        start = time.perf_counter()
        _, low, z = self._prepare(image)
        noise = self.invert(low, z, steps, progress) if invert else None
        z_n = z.repeat_interleave(n, dim=0)
        noise = noise.repeat_interleave(n, dim=0) if noise is not None else None
        out = self.decode(z_n, guidance_scale, steps, eta=eta, noise=noise, seed=seed, progress=progress,
                          spacing="ddim" if invert else "even")  # fmt: skip
        labels = [f"variation {j + 1} of picture {i + 1}" for i in range(low.shape[0]) for j in range(n)]
        times = {"decoder_s": time.perf_counter() - start}
        settings = call_record(self, "variations", n=n, eta=eta, guidance_scale=guidance_scale, steps=steps,
                               invert=invert, seed=seed, upsample=upsample, upsample_steps=upsample_steps)  # fmt: skip
        return self._finish(out, labels, z_n, upsample, upsample_steps, seed, progress, times, nrow=n,
                            settings=settings)  # fmt: skip

    @torch.no_grad()
    def interpolate(
        self,
        image_a,
        image_b,
        steps: int = 5,
        guidance_scale: float = 3.0,
        decoder_steps: int = 25,
        seed: int = 0,
        upsample: bool = True,
        upsample_steps: int = 10,
        progress: bool = False,
    ) -> Generation:
        """``steps`` pictures going from ``image_a`` to ``image_b`` (DALL·E 2 §3.2).

        Both the CLIP image embeddings and the DDIM-inverted noises are interpolated spherically
        (:func:`~dalle2_edu.edits.slerp`) at fractions 0, 1/(steps-1), …, 1, and decoded with η = 0 on the inversion's
        steps (:meth:`invert`), so the two
        ends come out close to the two pictures and the path between them is smooth.

        :param image_a, image_b: one picture each (see :meth:`variations` for the formats).
        """
        import time

        from dalle2_edu.edits import slerp

        steps = check_int("steps", steps, low=2, hint="(the two ends and the pictures between them)")
        decoder_steps, upsample_steps = check_counts(decoder_steps=decoder_steps, upsample_steps=upsample_steps)
        guidance_scale, seed = check_guidance_scale(guidance_scale), check_seed(seed)
        start = time.perf_counter()
        lows, zs = [], []
        for name, image in (("image_a", image_a), ("image_b", image_b)):
            _, low, z = self._prepare(image, name)
            if low.shape[0] != 1:
                raise ValueError(f"{name} must be one picture, got a batch of {low.shape[0]}")
            lows.append(low)
            zs.append(z)
        low, z = torch.cat(lows), torch.cat(zs)
        noise = self.invert(low, z, decoder_steps, progress)
        frac = torch.linspace(0, 1, steps, device=self.device)
        pair = lambda v: (v[:1].expand(steps, *v.shape[1:]), v[1:].expand(steps, *v.shape[1:]))  # noqa: E731
        z_path = slerp(*pair(torch.nn.functional.normalize(z, dim=-1)), frac) * z.shape[1] ** 0.5
        noise_path = slerp(*pair(noise), frac)
        out = self.decode(z_path, guidance_scale, decoder_steps, eta=0.0, noise=noise_path, seed=seed, spacing="ddim")
        labels = [f"{f:.2f} of the way from a to b" for f in frac.tolist()]
        times = {"decoder_s": time.perf_counter() - start}
        settings = call_record(self, "interpolate", steps=steps, guidance_scale=guidance_scale,
                               decoder_steps=decoder_steps, seed=seed, upsample=upsample,
                               upsample_steps=upsample_steps)  # fmt: skip
        return self._finish(out, labels, z_path, upsample, upsample_steps, seed, progress, times, nrow=steps,
                            settings=settings)  # fmt: skip

    def animate(self, start, end=None, **kwargs) -> Generation:
        """A smooth run of frames between two prompts or two pictures, or through the colours of one product
        (``colours="all"``): :func:`dalle2_edu.animation.animate` (frames, loop, seed, ... as keywords); write it as
        GIF and WebP with :func:`dalle2_edu.animation.save_animation`."""
        from dalle2_edu.animation import animate

        return animate(self, start, end, **kwargs)

    @torch.no_grad()
    def text_diff(
        self,
        image,
        from_text: str,
        to_text: str,
        amount: float | Sequence[float] = 0.5,
        guidance_scale: float = 3.0,
        steps: int = 25,
        seed: int = 0,
        upsample: bool = True,
        upsample_steps: int = 10,
        progress: bool = False,
    ) -> Generation:
        """Edit a picture by a change of words (DALL·E 2 §3.3): "a red mug" → "a blue mug" recolours the mug.

        With unit vectors z_i (the picture), d = normalise(z_t(to_text) - z_t(from_text)), the edited embedding is
        z_θ = slerp(z_i, d, θ) for θ = ``amount`` (0: unchanged; DALL·E 2 uses 0 … 0.5). It is decoded from the
        picture's DDIM-inverted noise with η = 0, so what the words do not mention stays as it was.

        :param image: one picture or a batch (see :meth:`variations`); every picture gets the same edit.
        :param amount: θ in [0, 1], or a list (or 1-D array) of θ for a row of increasingly strong edits
            (picture-major output, one grid row per picture; :func:`~dalle2_edu.validate.check_amounts`).
        :raises ValueError: an empty text, a word CLIP does not know, θ outside [0, 1].
        """
        import time

        from dalle2_edu.edits import slerp

        for name, text in (("from_text", from_text), ("to_text", to_text)):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be one string, e.g. 'a red mug', got {text!r}")
            check_prompts(text, name)
        amounts = check_amounts(amount)
        steps, upsample_steps = check_counts(steps=steps, upsample_steps=upsample_steps)
        guidance_scale, seed = check_guidance_scale(guidance_scale), check_seed(seed)
        start = time.perf_counter()
        _, low, z = self._prepare(image)
        text = self.clip.encode_text([from_text, to_text]).to(self.device)
        d = torch.nn.functional.normalize(text[1] - text[0], dim=-1)
        noise = self.invert(low, z, steps, progress)
        k, B = len(amounts), low.shape[0]
        z_unit = torch.nn.functional.normalize(z, dim=-1).repeat_interleave(k, dim=0)
        theta = torch.tensor(amounts, device=self.device).repeat(B)
        z_edit = slerp(z_unit, d.expand_as(z_unit), theta) * z.shape[1] ** 0.5
        out = self.decode(z_edit, guidance_scale, steps, eta=0.0, noise=noise.repeat_interleave(k, dim=0), seed=seed,
                          spacing="ddim")  # fmt: skip
        labels = [f"{from_text} → {to_text}, θ = {a:g}" for _ in range(B) for a in amounts]
        times = {"decoder_s": time.perf_counter() - start}
        settings = call_record(self, "text_diff", from_text=from_text, to_text=to_text, amount=amounts,
                               guidance_scale=guidance_scale, steps=steps, seed=seed, upsample=upsample,
                               upsample_steps=upsample_steps)  # fmt: skip
        return self._finish(out, labels, z_edit, upsample, upsample_steps, seed, progress, times, nrow=k,
                            settings=settings)  # fmt: skip

    @torch.no_grad()
    def inpaint(
        self,
        image,
        mask,
        prompt: str,
        n: int = 4,
        guidance_scale: float = 3.0,
        steps: int = 25,
        resample: int = 4,
        use_prior: bool = True,
        prior_steps: int = GENERATE_PRIOR_STEPS,
        seed: int = 0,
        upsample: bool = True,
        upsample_steps: int = 10,
        progress: bool = False,
    ) -> Generation:
        """Repaint the masked region of one picture so that the whole shows ``prompt`` (RePaint-style resampling,
        :func:`~dalle2_edu.edits.repaint`; no mask-conditioned training is needed).

        The prompt goes through the prior (or straight from CLIP's text tower with ``use_prior=False``) to an image
        embedding that conditions the decoder; the mask, taken at the picture's own size, is carried to the decoder's
        32×32 by max pooling (a low-resolution pixel is repainted when any of its block is). After upsampling, every
        pixel outside the mask is copied back from the picture, so those pixels are preserved exactly.

        :param image: one picture (see :meth:`variations` for the formats).
        :param mask: the picture's size; 1 (or white) = repaint, 0 = keep (:func:`~dalle2_edu.edits.mask_to_tensor`).
        :param prompt: what the finished picture should show, in the catalogue's words.
        :param resample: RePaint's U: each step is run U times (1 = plain replacement; seams show).
        :return: ``n`` repaintings.
        """
        import time

        from dalle2_edu.diffusion.sampling import respaced
        from dalle2_edu.edits import fit_size, mask_to_size, mask_to_tensor, repaint
        from dalle2_edu.stages.decoder import guided_decoder

        prompts = check_prompts(prompt)
        if len(prompts) != 1:
            raise ValueError(f"inpaint takes one prompt, got {len(prompts)}")
        n, steps, upsample_steps = check_counts(n=n, steps=steps, upsample_steps=upsample_steps)
        resample, prior_steps = check_counts(resample=resample, prior_steps=prior_steps)
        guidance_scale, seed = check_guidance_scale(guidance_scale), check_seed(seed)
        start = time.perf_counter()
        full, low, _ = self._prepare(image)
        if full.shape[0] != 1:
            raise ValueError(f"inpaint takes one picture, got a batch of {full.shape[0]}; call it once per picture")
        m_full = mask_to_tensor(mask, 1, full.shape[-1]).to(self.device)
        m_low = mask_to_size(m_full, self.image_size)
        z = self.image_embeddings_from_text(prompts, n, use_prior=use_prior, prior_steps=prior_steps, seed=seed)
        decoder, gd = self.decoder
        net = guided_decoder(decoder, z, guidance_scale)
        was_training = decoder.training
        decoder.eval()
        try:
            out = repaint(
                respaced(gd, min(steps, gd.num_timesteps)), net, low.expand(n, -1, -1, -1), m_low.expand(n, -1, -1, -1),
                resample=resample, generator=torch.Generator().manual_seed(offset_seed(seed, 1)), progress=progress,
            ).clamp(-1, 1)  # fmt: skip
        finally:
            decoder.train(was_training)
        times = {"decoder_s": time.perf_counter() - start}
        settings = call_record(self, "inpaint", prompt=prompts[0], n=n, guidance_scale=guidance_scale, steps=steps,
                               resample=resample, use_prior=use_prior, prior_steps=prior_steps, seed=seed,
                               upsample=upsample, upsample_steps=upsample_steps)  # fmt: skip
        result = self._finish(out, [prompts[0]] * n, z, upsample, upsample_steps, seed, progress, times, nrow=n,
                              settings=settings)  # fmt: skip
        size = result.tensors.shape[-1]
        keep_image = fit_size(full, size, "image").cpu()
        keep_mask = mask_to_size(m_full, size).cpu() if size != full.shape[-1] else m_full.cpu()
        result.tensors = keep_mask * result.tensors + (1 - keep_mask) * keep_image
        return result


def _upsample_spacing(spacing: str | None, sampler: str) -> str:
    """``generate``'s upsampler spacing: as given (checked), or by default :data:`GENERATE_UPSAMPLE_SPACING` for the
    ddim and ddpm samplers and ``"even"`` for the ODE solvers."""
    from dalle2_edu.diffusion.sampling import ODE_SAMPLERS, SPACINGS

    if spacing is None:
        return "even" if sampler in ODE_SAMPLERS else GENERATE_UPSAMPLE_SPACING
    if spacing not in SPACINGS:
        raise ValueError(f"upsample_spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if spacing != "even" and sampler in ODE_SAMPLERS:
        raise ValueError(f"upsample_spacing={spacing!r} applies to the ddim and ddpm samplers; {sampler!r} picks "
                         "its own noise levels")  # fmt: skip
    return spacing


def _blocks(total: int) -> list[tuple[int, int]]:
    """Pictures ``0 .. total - 1`` cut into blocks of :data:`SEED_BLOCK`: ``[(start, stop), ...]``."""
    return [(a, min(a + SEED_BLOCK, total)) for a in range(0, total, SEED_BLOCK)]


def _chain(first, rest):
    yield first
    yield from rest


def prompt_attributes(prompts: Sequence[str]) -> list[dict]:
    """What each prompt asks for, as attribute names (``parse_caption``; attributes it does not mention are absent)."""
    from dalle2_edu.datasets.catalogue import parse_caption

    return [{k: v for k, v in parse_caption(p).items() if v is not None} for p in prompts]
