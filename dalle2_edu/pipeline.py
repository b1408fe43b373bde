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
    def invert(self, low_res: torch.Tensor, image_emb: torch.Tensor, steps: int = 25, progress: bool = False):
        """DDIM inversion: the starting noise x_T from which the decoder, conditioned on ``image_emb`` and run
        deterministically (η = 0), draws (approximately) ``low_res`` again.

        Inverted with the plain conditional model (guidance scale 1): measured on 16 test pictures with the shipped
        decoder, decoding that noise at guidance 3 reconstructs them with MSE 0.14 (0.21 when inverting at scale 3;
        0.48 from fresh noise).
        """
        from dalle2_edu.decoder import guided_decoder, respaced

        decoder, gd = self.decoder
        net = guided_decoder(decoder, image_emb.to(self.device), 1.0)
        return respaced(gd, min(steps, gd.num_timesteps)).ddim_invert(net, low_res.to(self.device), progress=progress)

    def _finish(self, low_res, labels, image_emb, upsample, upsample_steps, seed, progress, times) -> Generation:
        import time

        start = time.perf_counter()
        images = self.upsample(low_res, upsample_steps, seed=seed, progress=progress) if upsample else low_res
        times["upsampler_s"] = time.perf_counter() - start
        return Generation(images.cpu(), labels, image_emb.cpu(), low_res.cpu(), times)

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

        The picture is encoded by CLIP; the decoder starts from the picture's DDIM-inverted noise (``invert``) and
        samples with η = ``eta`` > 0, so the variations keep what CLIP saw (category, colour) while the details
        differ. η = 0 with inversion gives back (approximately) the picture itself.

        :param image: PIL image(s), uint8 array, or tensor (B, 3, H, H) in [-1, 1] (e.g. ``generate(...).tensors``).
        :return: a :class:`Generation` with ``n`` pictures per input picture, input-major; ``prompts`` holds labels.
        """
        import time

        _check_positive_int("n", n)
        _check_positive_int("steps", steps)
        if not isinstance(eta, int | float) or eta < 0:
            raise ValueError(f"eta must be a number >= 0 (0: deterministic, 1: as noisy as DDPM), got {eta!r}")
        start = time.perf_counter()
        _, low, z = self._prepare(image)
        noise = self.invert(low, z, steps, progress) if invert else None
        z_n = z.repeat_interleave(n, dim=0)
        noise = noise.repeat_interleave(n, dim=0) if noise is not None else None
        out = self.decode(z_n, guidance_scale, steps, eta=eta, noise=noise, seed=seed, progress=progress)
        labels = [f"variation {j + 1} of picture {i + 1}" for i in range(low.shape[0]) for j in range(n)]
        times = {"decoder_s": time.perf_counter() - start}
        return self._finish(out, labels, z_n, upsample, upsample_steps, seed + 2, progress, times)

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
        (:func:`~dalle2_edu.edits.slerp`) at fractions 0, 1/(steps-1), …, 1, and decoded with η = 0, so the two
        ends come out close to the two pictures and the path between them is smooth.

        :param image_a, image_b: one picture each (see :meth:`variations` for the formats).
        """
        import time

        from dalle2_edu.edits import slerp

        _check_positive_int("steps", steps)
        _check_positive_int("decoder_steps", decoder_steps)
        if steps < 2:
            raise ValueError(f"steps must be >= 2 (the two ends), got {steps}")
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
        out = self.decode(z_path, guidance_scale, decoder_steps, eta=0.0, noise=noise_path, seed=seed)
        labels = [f"{f:.2f} of the way from a to b" for f in frac.tolist()]
        times = {"decoder_s": time.perf_counter() - start}
        return self._finish(out, labels, z_path, upsample, upsample_steps, seed + 2, progress, times)

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
        :param amount: θ, or a list of θ for a row of increasingly strong edits (picture-major output).
        :raises ValueError: an empty text, a word CLIP does not know, θ outside [0, 1].
        """
        import time

        from dalle2_edu.edits import slerp

        from_text, to_text = _check_prompts(from_text)[0], _check_prompts(to_text)[0]
        amounts = [amount] if isinstance(amount, int | float) else list(amount)
        if not amounts or not all(isinstance(a, int | float) and 0 <= a <= 1 for a in amounts):
            raise ValueError(f"amount must be a number in [0, 1] (or a list of them), got {amount!r}")
        _check_positive_int("steps", steps)
        start = time.perf_counter()
        _, low, z = self._prepare(image)
        text = self.clip.encode_text([from_text, to_text]).to(self.device)
        d = torch.nn.functional.normalize(text[1] - text[0], dim=-1)
        noise = self.invert(low, z, steps, progress)
        k, B = len(amounts), low.shape[0]
        z_unit = torch.nn.functional.normalize(z, dim=-1).repeat_interleave(k, dim=0)
        theta = torch.tensor(amounts, device=self.device).repeat(B)
        z_edit = slerp(z_unit, d.expand_as(z_unit), theta) * z.shape[1] ** 0.5
        out = self.decode(z_edit, guidance_scale, steps, eta=0.0, noise=noise.repeat_interleave(k, dim=0), seed=seed)
        labels = [f"{from_text} → {to_text}, θ = {a:g}" for _ in range(B) for a in amounts]
        times = {"decoder_s": time.perf_counter() - start}
        return self._finish(out, labels, z_edit, upsample, upsample_steps, seed + 2, progress, times)

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
        prior_steps: int = 64,
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

        from dalle2_edu.decoder import guided_decoder, respaced
        from dalle2_edu.edits import fit_size, mask_to_size, mask_to_tensor, repaint

        prompts = _check_prompts(prompt)
        if len(prompts) != 1:
            raise ValueError(f"inpaint takes one prompt, got {len(prompts)}")
        _check_positive_int("n", n)
        _check_positive_int("steps", steps)
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
                resample=resample, generator=torch.Generator().manual_seed(seed + 1), progress=progress,
            ).clamp(-1, 1)  # fmt: skip
        finally:
            decoder.train(was_training)
        times = {"decoder_s": time.perf_counter() - start}
        result = self._finish(out, [prompts[0]] * n, z, upsample, upsample_steps, seed + 2, progress, times)
        size = result.tensors.shape[-1]
        keep_image = fit_size(full, size, "image").cpu()
        keep_mask = mask_to_size(m_full, size).cpu() if size != full.shape[-1] else m_full.cpu()
        result.tensors = keep_mask * result.tensors + (1 - keep_mask) * keep_image
        return result


def prompt_attributes(prompts: Sequence[str]) -> list[dict]:
    """What each prompt asks for, as attribute names (``parse_caption``; attributes it does not mention are absent)."""
    from dalle2_edu.datasets.catalogue import parse_caption

    return [{k: v for k, v in parse_caption(p).items() if v is not None} for p in prompts]
