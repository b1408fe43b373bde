"""Interactive views for the notebooks (ipywidgets): a denoising explorer and a prompt playground.

- :class:`DenoisingExplorer` runs a sampler ONCE, keeps every step, and lets a slider (with a play button) scrub
  through them: x_t on the left, the model's guess x̂_0 from that x_t on the right. It works for 2D point clouds
  (:meth:`~DenoisingExplorer.for_points`) and pictures (:meth:`~DenoisingExplorer.for_images`,
  :meth:`~DenoisingExplorer.for_prompt`). Moving the slider only swaps a stored PNG: nothing is recomputed.
- :class:`PromptPlayground` wraps :class:`~dalle2_edu.pipeline.UnCLIP`: a prompt box, guidance and steps sliders, a
  seed, a Generate button with a progress bar, and buttons for "variations of this one" and "recolour"; a toggle
  under each picture picks it, "save picked" writes the picked pictures with their metadata
  (:mod:`~dalle2_edu.provenance`) into a folder, and "edit first picked" runs a variation, a recolouring or an
  inpainting on the first picked one.

Both keep their state in plain attributes (``explorer.index``, ``playground.result``) and draw through
``ipywidgets.Image`` PNGs, so the tests drive them without a browser: set a value or ``button.click()``, then compare
the PNG with what the package call gives.

    >>> DenoisingExplorer.for_points(gd, model, n=500)        # doctest: +SKIP  (in a notebook cell)
    >>> PromptPlayground(UnCLIP.from_pretrained("data/checkpoints"))   # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from dalle2_edu.pipeline import (
    GENERATE_PRIOR_STEPS,
    GENERATE_SAMPLER,
    GENERATE_STEPS,
    GENERATE_UPSAMPLE_STEPS,
    STOCHASTIC_SAMPLERS,
)
from dalle2_edu.validate import (
    check_count,
    check_counts,
    check_eta,
    check_guidance_scale,
    check_int,
    check_seed,
    offset_seed,
)
from dalle2_edu.viz import image_grid


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → PNG file bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_array(data: bytes) -> np.ndarray:
    """PNG file bytes → uint8 (H, W, 3) (for tests and screenshots)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pictures_png(images: torch.Tensor, nrow: int | None = None, scale: int = 3) -> bytes:
    """(N, 3, H, W) in [-1, 1] → one PNG of the pictures in a row (or ``nrow`` per row), each enlarged ``scale``×
    with nearest-neighbour so single pixels stay visible."""
    grid = image_grid(images, nrow=nrow or len(images)).numpy()
    return png_bytes(grid.repeat(scale, axis=0).repeat(scale, axis=1))


# ------------------------------------------------------------------------------------------------ explorer
class DenoisingExplorer:
    """Scrub through one stored sampling trajectory.

    :param states: the K + 1 states x_T, …, x_0 the sampler passed through (K = number of steps), each (N, 2) points
        or (N, 3, H, W) pictures in [-1, 1].
    :param guesses: K + 1 guesses x̂_0: the model's prediction from each state (the last is x_0 itself).
    :param timesteps: K + 1 labels: the step t at which each state was fed to the model (the last: 0).
    :param kind: ``"points"`` or ``"images"`` (default: from the states' shape).
    :param title: shown above the slider.
    """

    def __init__(self, states, guesses, timesteps, kind: str | None = None, title: str = ""):
        import ipywidgets as widgets

        if not (len(states) == len(guesses) == len(timesteps)) or len(states) < 2:
            raise ValueError(
                f"states, guesses and timesteps must be equally long (>= 2), got {len(states)}, {len(guesses)}, "
                f"{len(timesteps)}; build the explorer with for_points / for_images / for_prompt"
            )
        if len(states[0]) == 0:
            raise ValueError("the trajectory holds no points or pictures (a batch of 0); draw at least one (n >= 1)")
        self.states = [s.detach().cpu() for s in states]
        self.guesses = [g.detach().cpu() for g in guesses]
        self.timesteps = [int(t) for t in timesteps]
        self.kind = kind or ("points" if self.states[0].ndim == 2 else "images")
        if self.kind not in ("points", "images"):
            raise ValueError(f"kind must be 'points' or 'images', got {kind!r}")
        self._cache: dict[int, bytes] = {}
        last = len(self.states) - 1
        self.slider = widgets.IntSlider(value=0, min=0, max=last, description="step", continuous_update=True)
        self.play = widgets.Play(value=0, min=0, max=last, interval=150, description="play")
        widgets.link((self.play, "value"), (self.slider, "value"))  # kernel-side link: works without a browser too
        self.label = widgets.Label()
        self.image = widgets.Image(format="png")
        self.slider.observe(lambda change: self._show(change["new"]), names="value")
        header = [widgets.HTML(f"<b>{title}</b>")] if title else []
        self.widget = widgets.VBox(header + [widgets.HBox([self.play, self.slider, self.label]), self.image])
        self._show(0)

    def __len__(self) -> int:
        return len(self.states)

    @property
    def index(self) -> int:
        return self.slider.value

    def frame(self, k: int) -> bytes:
        """PNG of frame ``k`` (x_t beside x̂_0), drawn once and then kept."""
        if not 0 <= k < len(self.states):
            raise IndexError(f"frame {k} does not exist; the trajectory has frames 0..{len(self.states) - 1}")
        if k not in self._cache:
            self._cache[k] = self._draw(k)
        return self._cache[k]

    def _title(self, k: int) -> str:
        if k == len(self.states) - 1:
            return "x_0: finished"
        return f"x_t at t = {self.timesteps[k]}" + (" (pure noise)" if k == 0 else "")

    def _draw(self, k: int) -> bytes:
        if self.kind == "images":
            state, guess = self.states[k], self.guesses[k]
            n = len(state)
            nrow = n if n <= 4 else int(np.ceil(n / 2))
            left = image_grid(state.clamp(-1, 1), nrow=nrow).numpy()
            right = image_grid(guess.clamp(-1, 1), nrow=nrow).numpy()
            gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
            both = np.concatenate([left, gap, right], axis=1)
            scale = max(1, 256 // left.shape[0])
            return png_bytes(both.repeat(scale, axis=0).repeat(scale, axis=1))
        import matplotlib.pyplot as plt

        from dalle2_edu.viz import scatter_row

        fig = scatter_row([self.states[k], self.guesses[k]], [self._title(k), "the model's guess x̂_0"], lim=2.0)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()

    def _show(self, k: int) -> None:
        self.image.value = self.frame(k)
        self.label.value = self._title(k) if self.kind == "images" else f"t = {self.timesteps[k]}"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -------------------------------------------------------------------------------- building from a sampler
    @classmethod
    def from_trajectory(cls, start: torch.Tensor, steps: Sequence[dict], timesteps: Sequence[int], **kwargs):
        """From a progressive sampler's output: ``start`` = x_T, ``steps`` = its dicts (sample, pred_x0) in order,
        ``timesteps`` = the (original) t of each step."""
        steps = list(steps)
        if len(steps) != len(timesteps):
            raise ValueError(f"got {len(steps)} steps but {len(timesteps)} timesteps")
        states = [start] + [s["sample"] for s in steps]
        guesses = [s["pred_x0"] for s in steps] + [steps[-1]["sample"]]
        return cls(states, guesses, list(timesteps) + [0], **kwargs)

    @classmethod
    def for_points(cls, gd, model: Callable, n: int = 500, steps: int | None = None, seed: int = 0, **kwargs):
        """Ancestral sampling of ``n`` 2D points with ``model`` (optionally respaced to ``steps``), all kept."""
        from dalle2_edu.diffusion.sampling import respaced, sample_progressive

        n, seed = check_count("n", n), check_seed(seed)
        steps = gd.num_timesteps if steps is None else check_count("steps", steps)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(n, 2, generator=generator)
        trajectory = sample_progressive(model, gd, (n, 2), sampler="ddpm", steps=steps, noise=start,
                                        generator=generator)  # fmt: skip
        t_orig = respaced(gd, steps).timestep_map.flip(0).tolist()
        return cls.from_trajectory(start, trajectory, t_orig, kind="points", **kwargs)

    @classmethod
    def for_images(
        cls,
        gd,
        model: Callable,
        shape,
        steps: int = 25,
        eta: float = 0.0,
        seed: int = 0,
        device="cpu",
        noise: torch.Tensor | None = None,
        sampler: str = "ddim",
        **kwargs,
    ):
        """Sampling of pictures of ``shape`` (N, 3, H, W) with ``model(x_t, t)`` (e.g. a guided decoder) on
        ``device``, every step kept; the noise is drawn on the CPU from ``seed``, as every sampler of the package does.

        :param sampler: one of :data:`~dalle2_edu.diffusion.sampling.SAMPLERS` (default DDIM). For the ODE solvers
            ``steps`` counts network calls and each frame is labelled with the (rounded) original t the solver
            called the network at; Heun shows one frame per noise level (two calls each).
        :param noise: the starting x_T (``shape``) instead of drawing it from ``seed`` (which then seeds only the
            step noise of DDIM with η > 0 and of DDPM).
        """
        from dalle2_edu.diffusion.sampling import ODE_SAMPLERS, check_sampler, max_steps, respaced, sample_progressive

        shape = tuple(shape)
        if len(shape) != 4 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be (N, 3, H, W) with every size >= 1 (N pictures), got {shape}")
        steps, eta, seed = check_count("steps", steps), check_eta(eta), check_seed(seed)
        sampler = check_sampler(sampler)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise must have the shape {shape}, got {tuple(noise.shape)}")
        steps = min(steps, max_steps(sampler, gd.num_timesteps))
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(*shape, generator=generator) if noise is None else noise.detach().cpu()
        trajectory = list(sample_progressive(model, gd, shape, sampler=sampler, steps=steps, eta=eta, noise=start,
                                             generator=generator, device=device))  # fmt: skip
        if sampler in ODE_SAMPLERS:  # the solvers report the original (for Euler/Heun fractional) t they called at
            t_orig = [round(float(step["t"])) for step in trajectory]
        else:
            t_orig = respaced(gd, steps).timestep_map.flip(0).tolist()
        return cls.from_trajectory(start, trajectory, t_orig, kind="images", **kwargs)

    @classmethod
    def for_prompt(cls, pipe, prompt: str, n: int = 4, steps: int = GENERATE_STEPS, guidance_scale: float = 3.0,
                   seed: int = 0, sampler: str = GENERATE_SAMPLER):  # fmt: skip
        """The decoder's trajectory for a prompt: the same pictures as ``pipe.generate(prompt, n, guidance_scale,
        steps, seed, upsample=False, sampler=sampler)`` (the same image embeddings and the same starting noise,
        :meth:`~dalle2_edu.pipeline.UnCLIP.decoder_start_noise`; for a stochastic sampler, whose step noise ``generate``
        draws block by block, for up to :data:`~dalle2_edu.pipeline.SEED_BLOCK` pictures)."""
        from dalle2_edu.stages.decoder import guided_decoder

        n, steps = check_counts(n=n, steps=steps)
        guidance_scale, seed = check_guidance_scale(guidance_scale), check_seed(seed)
        z = pipe.image_embeddings_from_text([prompt], n, seed=seed)
        decoder, gd = pipe.decoder
        size = decoder.unet.config.image_size
        net = guided_decoder(decoder, z, guidance_scale)
        decoder.eval()
        # a stochastic sampler draws x_T and then every step's noise from one generator (seed + 1), as generate does
        noise = None if sampler in STOCHASTIC_SAMPLERS else pipe.decoder_start_noise(n, seed)
        return cls.for_images(gd, net, (n, 3, size, size), steps=steps, seed=offset_seed(seed, 1), device=pipe.device,
                              noise=noise, title=prompt, sampler=sampler)  # fmt: skip


# ------------------------------------------------------------------------------------------------ playground
def recoloured_prompt(prompt: str, colour: str) -> str:
    """``prompt`` with its colour word replaced by ``colour`` ("a red mug", "blue" → "a blue mug").

    :raises ValueError: the prompt names no colour or several, or ``colour`` is not one of the catalogue's colours.
    """
    from dalle2_edu.datasets.catalogue import COLOUR_NAMES

    if colour not in COLOUR_NAMES:
        raise ValueError(f"unknown colour {colour!r}; choose one of {', '.join(COLOUR_NAMES)}")
    named = [c for c in COLOUR_NAMES if re.search(rf"\b{re.escape(c)}\b(?! background)", prompt.lower())]
    if len(named) != 1:
        what = "no colour" if not named else f"several colours ({', '.join(named)})"
        raise ValueError(f"the prompt {prompt!r} names {what}; recolouring needs exactly one, e.g. 'a red mug'")
    old = named[0]
    new = re.sub(rf"\b{re.escape(old)}\b", colour, prompt, count=1, flags=re.IGNORECASE)
    return _fix_article(new)


REGIONS = ("centre", "top half", "bottom half", "left half", "right half")
"""The masks the playground's inpainting offers (:func:`region_mask`)."""


def region_mask(region: str, size: int) -> torch.Tensor:
    """A (size, size) float mask, 1 = repaint: the ``"centre"`` square (the middle half of each side) or one half.

    :raises ValueError: an unknown region (the message lists them).
    """
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
    size = check_count("size", size)
    mask = torch.zeros(size, size)
    half, quarter = size // 2, size // 4
    rows, cols = {"centre": (slice(quarter, size - quarter), slice(quarter, size - quarter)),
                  "top half": (slice(0, half), slice(None)), "bottom half": (slice(half, None), slice(None)),
                  "left half": (slice(None), slice(0, half)),
                  "right half": (slice(None), slice(half, None))}[region]  # fmt: skip
    mask[rows, cols] = 1.0
    return mask


EDITS = ("variations", "recolour", "inpaint")
"""What "edit first picked" can do: ``pipe.variations``, ``pipe.text_diff`` to the chosen colour, ``pipe.inpaint``
of the chosen region with the prompt in the prompt box."""


def _fix_article(text: str) -> str:
    """ "a orange" → "an orange", "an red" → "a red"."""
    text = re.sub(r"\b([aA]) (?=[aeiouAEIOU])", r"\1n ", text)
    return re.sub(r"\b([aA])n (?=[^aeiouAEIOU\W])", r"\1 ", text)


class PromptPlayground:
    """Type a prompt, press Generate, see 4 pictures; then ask for variations of one, or recolour it.

    :param pipe: a :class:`~dalle2_edu.pipeline.UnCLIP`.
    :param prompt: the starting prompt.
    :param n: pictures per click, shown in one row: 1 to :data:`~dalle2_edu.pipeline.SEED_BLOCK` (64).
    :param steps, guidance_scale, seed: starting values of the sliders and the seed box (the sliders reach at least
        100 steps and a scale of 8, further when the starting value is larger).
    :param upsample: run the 32→64 upsampler.
    :param prior_steps: the prior's DDIM steps.
    :param sampler: the decoder's and upsampler's sampler to start with (a dropdown of
        :data:`~dalle2_edu.diffusion.sampling.SAMPLERS`; for the ODE solvers ``steps`` counts network calls); the
        defaults of ``sampler``, ``steps`` and ``upsample_steps`` are :meth:`~dalle2_edu.pipeline.UnCLIP.generate`'s.
    :param upsample_steps: the upsampler's steps (network calls for the ODE solvers).
    :param save_folder: where "save picked" writes, to start with (a text box; created when first saved into).
    """

    def __init__(
        self,
        pipe,
        prompt: str = "a red striped mug on a wooden table",
        n: int = 4,
        steps: int = GENERATE_STEPS,
        guidance_scale: float = 3.0,
        seed: int = 0,
        upsample: bool = True,
        prior_steps: int = GENERATE_PRIOR_STEPS,
        save_folder: str = "out/picked",
        sampler: str = GENERATE_SAMPLER,
        upsample_steps: int = GENERATE_UPSAMPLE_STEPS,
    ):
        import ipywidgets as widgets

        from dalle2_edu.datasets.catalogue import COLOUR_NAMES
        from dalle2_edu.pipeline import SEED_BLOCK

        n = check_int("n", n, low=1, high=SEED_BLOCK, hint="(pictures per click; pipe.generate draws more)")
        from dalle2_edu.diffusion.sampling import SAMPLERS, check_sampler

        steps, prior_steps, upsample_steps = check_counts(steps=steps, prior_steps=prior_steps,
                                                          upsample_steps=upsample_steps)  # fmt: skip
        guidance_scale, seed, sampler = check_guidance_scale(guidance_scale), check_seed(seed), check_sampler(sampler)
        self.pipe, self.n, self.upsample, self.prior_steps = pipe, n, upsample, prior_steps
        self.upsample_steps = upsample_steps
        self.sampler = widgets.Dropdown(options=list(SAMPLERS), value=sampler, description="sampler",
                                        layout=widgets.Layout(width="200px"))  # fmt: skip
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="460px"))
        self.guidance = widgets.FloatSlider(value=guidance_scale, min=0.0, max=max(8.0, guidance_scale), step=0.5,
                                            description="guidance")  # fmt: skip
        self.steps = widgets.IntSlider(value=steps, min=1, max=max(100, steps), description="steps")
        self.seed = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="160px"))
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=3, description="")
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.pick = widgets.Dropdown(options=list(range(1, n + 1)), value=1, description="picture",
                                     layout=widgets.Layout(width="160px"))  # fmt: skip
        self.variations_button = widgets.Button(description="variations of this one")
        self.colour = widgets.Dropdown(options=list(COLOUR_NAMES), value="blue", description="colour",
                                       layout=widgets.Layout(width="180px"))  # fmt: skip
        self.recolour_button = widgets.Button(description="recolour")
        self.picks = [widgets.ToggleButton(value=False, description=f"pick {j + 1}", icon="check",
                                           tooltip=f"pick picture {j + 1} (to save or edit)")
                      for j in range(n)]  # fmt: skip
        self.save_folder = widgets.Text(value=str(save_folder), description="save to",
                                        layout=widgets.Layout(width="300px"))  # fmt: skip
        self.save_button = widgets.Button(description="save picked", tooltip="write the picked pictures, with "
                                          "their metadata, into the folder")  # fmt: skip
        self.edit_kind = widgets.Dropdown(options=list(EDITS), value="variations", description="edit",
                                          layout=widgets.Layout(width="200px"))  # fmt: skip
        self.region = widgets.Dropdown(options=list(REGIONS), value="centre", description="repaint",
                                       layout=widgets.Layout(width="200px"))  # fmt: skip
        self.edit_button = widgets.Button(description="edit first picked")
        self.generate_button.on_click(lambda _: self.generate())
        self.variations_button.on_click(lambda _: self.variations())
        self.recolour_button.on_click(lambda _: self.recolour())
        self.save_button.on_click(lambda _: self.save())
        self.edit_button.on_click(lambda _: self.edit())
        self.result = None  # the Generation on show
        self.source_prompts: list[str] = []  # the prompt each picture on show depicts
        self.saved: list = []  # the paths the last "save picked" wrote
        self.widget = widgets.VBox(
            [
                self.prompt,
                widgets.HBox([self.guidance, self.steps, self.sampler, self.seed]),
                widgets.HBox([self.generate_button, self.progress, self.status]),
                self.image,
                widgets.HBox(self.picks),
                widgets.HBox([self.save_folder, self.save_button]),
                widgets.HBox([self.edit_kind, self.colour, self.region, self.edit_button]),
                widgets.HBox([self.pick, self.variations_button, self.recolour_button]),
            ]
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _run(self, stages: int, work: Callable[[Callable[[], None]], None]) -> bool:
        """Run ``work(advance)`` with the progress bar at 0..stages; errors (a word the model does not know, no
        picture yet) go to the status line in red instead of a traceback. Returns whether it worked."""
        import html

        self.progress.max, self.progress.value = stages, 0
        self.status.value = ""

        def advance():
            self.progress.value += 1

        try:
            work(advance)
        except ValueError as err:
            self.status.value = f"<span style='color:#b00'>⚠ {html.escape(str(err))}</span>"
            return False
        return True

    def _show(self, result, prompts: list[str]) -> None:
        self.result, self.source_prompts = result, prompts
        scale = 3 if result.tensors.shape[-1] >= 64 else 6
        self.image.value = pictures_png(result.tensors, scale=scale)
        width = f"{(result.tensors.shape[-1] + 2) * scale}px"  # one toggle under each picture of the row
        for toggle in self.picks:
            toggle.value = False
            toggle.layout.width = width

    def _settings(self) -> dict:
        return dict(guidance_scale=self.guidance.value, steps=self.steps.value, seed=self.seed.value)

    def generate(self) -> bool:
        """What the Generate button does: ``pipe.generate(prompt, n, guidance, steps, seed)`` stage by stage."""
        from dalle2_edu.pipeline import Generation

        s = {**self._settings(), "sampler": self.sampler.value}  # the edits keep their own (DDIM) sampler

        def work(advance):
            from dalle2_edu.pipeline import SEED_BLOCK, _upsample_spacing
            from dalle2_edu.provenance import call_record

            prompt = self.prompt.value
            z = self.pipe.image_embeddings_from_text([prompt], self.n, prior_steps=self.prior_steps, seed=s["seed"])
            advance()
            low = self.pipe.decode(z, s["guidance_scale"], s["steps"], seed=offset_seed(s["seed"], 1),
                                   sampler=s["sampler"])  # fmt: skip
            advance()
            spacing = _upsample_spacing(None, s["sampler"])  # generate's default for this sampler
            images = (self.pipe.upsample(low, self.upsample_steps, seed=offset_seed(s["seed"], 2), sampler=s["sampler"],
                                         spacing=spacing) if self.upsample else low)  # fmt: skip
            advance()
            # exactly what pipe.generate draws with these settings (n <= SEED_BLOCK: one block), so it is recorded so
            settings = call_record(self.pipe, "generate", prompts=[prompt], n=self.n, seed=s["seed"],
                                   guidance_scale=s["guidance_scale"], steps=s["steps"], use_prior=True,
                                   prior_steps=self.prior_steps, prior_guidance_scale=1.0, n_candidates=2,
                                   upsample=self.upsample, upsample_steps=self.upsample_steps, batch_size=SEED_BLOCK,
                                   sampler=s["sampler"], upsample_spacing=spacing)  # fmt: skip
            out = Generation(images.cpu(), [prompt] * self.n, z.cpu(), low.cpu(), nrow=self.n, settings=settings)
            self._show(out, [prompt] * self.n)

        return self._run(3, work)

    def _picked(self, index: int | None = None) -> torch.Tensor:
        if self.result is None:
            raise ValueError("no pictures yet: press Generate first")
        i = self.pick.value - 1 if index is None else index
        return self.result.tensors[i : i + 1]

    def picked(self) -> list[int]:
        """The pictures on show whose toggle is down (0-based, left to right)."""
        return [j for j, toggle in enumerate(self.picks) if toggle.value and self.result is not None
                and j < len(self.result.prompts)]  # fmt: skip

    def _first_picked(self) -> int:
        if self.result is None:
            raise ValueError("no pictures yet: press Generate first")
        picked = self.picked()
        if not picked:
            raise ValueError("no picture picked: press the 'pick' toggle under one first")
        return picked[0]

    def save(self) -> bool:
        """What "save picked" does: write the picked pictures, each with its metadata, into the folder of the
        "save to" box (created if missing; a name already there gets ``-2``, ``-3``, ...). ``self.saved`` holds the
        paths; the status line names them."""
        import html

        from dalle2_edu.provenance import save_generation

        def work(advance):
            self._first_picked()
            folder = self.save_folder.value.strip()
            if not folder:
                raise ValueError("the save-to box is empty: type a folder, e.g. out/picked")
            self.saved = save_generation(self.result, folder, self.picked(), overwrite=False)
            advance()

        if not self._run(1, work):
            return False
        names = ", ".join(html.escape(p.name) for p in self.saved)
        where = html.escape(str(self.saved[0].parent))
        self.status.value = f"saved {len(self.saved)} picture(s) to {where}: {names}"
        return True

    def _edited(self, out, index: int, **extra) -> None:
        """Record what an edit started from (picture ``index`` on show), so a saved edit can be redrawn."""
        out.settings = {**out.settings, "source": self.result.metadata(index), **extra}

    def _variations(self, index: int) -> None:
        source, prompt = self._picked(index), self.source_prompts[index]
        out = self.pipe.variations(source, n=self.n, upsample=self.upsample, **self._settings())
        self._edited(out, index)
        self._show(out, [prompt] * self.n)

    def _recolour(self, index: int) -> None:
        source, prompt = self._picked(index), self.source_prompts[index]
        target = recoloured_prompt(prompt, self.colour.value)
        amounts = np.linspace(0.3, 0.6, self.n).round(3).tolist()
        out = self.pipe.text_diff(source, prompt, target, amount=amounts, upsample=self.upsample, **self._settings())
        self._edited(out, index)
        self._show(out, [target] * self.n)

    def _inpaint(self, index: int) -> None:
        source, prompt = self._picked(index), self.prompt.value
        mask = region_mask(self.region.value, source.shape[-1])
        out = self.pipe.inpaint(source, mask, prompt, n=self.n, prior_steps=self.prior_steps, upsample=self.upsample,
                                **self._settings())  # fmt: skip
        self._edited(out, index, mask_region=self.region.value)
        self._show(out, [prompt] * self.n)

    def variations(self) -> bool:
        """What "variations of this one" does: ``pipe.variations(picked picture, n)``."""

        def work(advance):
            self._variations(self.pick.value - 1)
            advance()

        return self._run(1, work)

    def recolour(self) -> bool:
        """What "recolour" does: ``pipe.text_diff(picked picture, its prompt, the prompt in the chosen colour)`` at
        n strengths θ from 0.3 to 0.6."""

        def work(advance):
            self._recolour(self.pick.value - 1)
            advance()

        return self._run(1, work)

    def edit(self) -> bool:
        """What "edit first picked" does, on the first picture whose toggle is down: ``"variations"``
        (:meth:`variations`), ``"recolour"`` to the chosen colour (:meth:`recolour`), or ``"inpaint"``: repaint the
        chosen region so that the picture shows the prompt in the prompt box (``pipe.inpaint``). The result replaces
        the pictures on show and records the picture it started from (a saved edit can be redrawn)."""

        def work(advance):
            index = self._first_picked()
            {"variations": self._variations, "recolour": self._recolour, "inpaint": self._inpaint}[
                self.edit_kind.value
            ](index)
            advance()

        return self._run(1, work)
