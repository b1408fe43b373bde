"""Widget logic without a browser: set values, press buttons, and compare the PNG on show with the package call."""

import pytest
import torch
from tiny_unclip import PROMPTS, write_tiny_checkpoints

from dalle2_edu.diffusion import GaussianDiffusion
from dalle2_edu.diffusion.schedules import cosine_betas
from dalle2_edu.pipeline import GENERATE_SAMPLER, UnCLIP
from dalle2_edu.stages.decoder import guided_decoder
from dalle2_edu.widgets import DenoisingExplorer, PromptPlayground, pictures_png, png_to_array, recoloured_prompt


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return UnCLIP.from_pretrained(write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))


def shrink(x, t):
    return 0.3 * x  # a stand-in ε-model for 2D points


def test_points_explorer_scrubs_a_stored_trajectory_without_recomputing():
    gd = GaussianDiffusion(cosine_betas(50), data_type="continuous")
    calls = []
    model = lambda x, t: calls.append(1) or shrink(x, t)  # noqa: E731
    explorer = DenoisingExplorer.for_points(gd, model, n=200, steps=10, seed=0)
    assert len(explorer) == 11 and len(calls) == 10  # x_T plus one state per step, the model run once per step
    reference = gd.respace(explorer_steps(gd, 10)).p_sample_loop(
        model, (200, 2), generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(explorer.states[-1], reference)  # the trajectory is the package's sampler, same seed
    first = explorer.image.value
    explorer.slider.value = 10
    assert explorer.image.value != first and explorer.label.value == "t = 0"
    explorer.play.value = 5  # the play button drives the slider
    assert explorer.slider.value == 5 and explorer.image.value == explorer.frame(5)
    calls.clear()
    for k in range(11):
        explorer.slider.value = k
    assert not calls  # scrubbing never calls the model
    with pytest.raises(IndexError, match="frames 0..10"):
        explorer.frame(11)


def explorer_steps(gd, steps):
    from dalle2_edu.diffusion.schedules import space_timesteps

    return space_timesteps(gd.num_timesteps, [steps])


def test_image_explorer_shows_x_t_beside_the_guess_and_ends_at_the_pipelines_pictures(pipe):
    explorer = DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=2, steps=4, guidance_scale=3.0, seed=3)
    assert len(explorer) == 5 and explorer.kind == "images"
    final = pipe.generate(PROMPTS[0], n=2, steps=4, seed=3, upsample=False).tensors
    assert torch.allclose(explorer.states[-1].clamp(-1, 1), final, atol=1e-5)
    frames = [png_to_array(explorer.frame(k)) for k in range(5)]
    assert all(f.shape == frames[0].shape for f in frames)
    explorer.slider.value = 4
    assert (png_to_array(explorer.image.value) == frames[4]).all()
    assert (frames[0] != frames[4]).any()
    # the left half of the last frame is the finished pictures, drawn as the package draws them
    left = png_to_array(pictures_png(final, nrow=2, scale=1))
    scale = frames[4].shape[0] // left.shape[0]
    assert (frames[4][::scale, ::scale][: left.shape[0], : left.shape[1]] == left).all()
    with pytest.raises(ValueError, match="equally long"):
        DenoisingExplorer(explorer.states, explorer.guesses[:2], explorer.timesteps)


def test_image_explorer_for_any_model(pipe):
    decoder, gd = pipe.decoder
    z = pipe.encode_image(torch.zeros(1, 3, 16, 16))
    explorer = DenoisingExplorer.for_images(gd, guided_decoder(decoder, z, 1.0), (1, 3, 8, 8), steps=3, seed=0)
    assert len(explorer) == 4 and explorer.states[0].shape == (1, 3, 8, 8)


def test_playground_generate_shows_the_pipelines_pictures(pipe):
    play = PromptPlayground(pipe, prompt=PROMPTS[1], n=2, steps=3, prior_steps=3, seed=4)
    assert play.image.value == b"" and play.result is None
    play.guidance.value = 2.0
    play.generate_button.click()
    assert play.progress.value == play.progress.max == 3 and play.status.value == ""
    expected = pipe.generate(PROMPTS[1], n=2, steps=3, guidance_scale=2.0, seed=4, prior_steps=3)
    assert torch.equal(play.result.tensors, expected.tensors)
    assert play.image.value == pictures_png(expected.tensors, scale=6)
    before = play.image.value
    play.seed.value = 5
    play.generate_button.click()
    assert play.image.value != before


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m", "euler", "heun"])
def test_image_explorer_and_playground_take_every_sampler(pipe, sampler):
    explorer = DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=2, steps=4, seed=3, sampler=sampler)
    final = pipe.generate(PROMPTS[0], n=2, steps=4, seed=3, upsample=False, sampler=sampler).tensors
    assert torch.allclose(explorer.states[-1].clamp(-1, 1), final, atol=1e-5)
    from dalle2_edu.diffusion.solvers import heun_levels

    assert len(explorer) == 1 + (heun_levels(4) if sampler == "heun" else 4)  # x_T, then a frame per step (Heun: level)
    t = explorer.timesteps
    assert all(a >= b for a, b in zip(t, t[1:])) and t[0] > t[-1] == 0  # the original t, falling (rounded)
    play = PromptPlayground(pipe, prompt=PROMPTS[1], n=2, steps=3, prior_steps=3, seed=4, upsample_steps=2)
    assert play.sampler.value == GENERATE_SAMPLER
    play.sampler.value = sampler
    play.generate_button.click()
    expected = pipe.generate(PROMPTS[1], n=2, steps=3, seed=4, prior_steps=3, upsample_steps=2, sampler=sampler)
    assert torch.equal(play.result.tensors, expected.tensors)
    assert play.result.settings["sampler"] == sampler and play.result.settings["upsample_steps"] == 2
    with pytest.raises(ValueError, match="unknown sampler"):
        PromptPlayground(pipe, sampler="plms")
    with pytest.raises(ValueError, match="unknown sampler"):
        DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=1, steps=2, sampler="plms")


def test_playground_variations_and_recolour_buttons(pipe):
    play = PromptPlayground(pipe, prompt=PROMPTS[0], n=2, steps=3, prior_steps=3)
    play.generate_button.click()
    picked = play.result.tensors[1:2]
    play.pick.value = 2
    play.variations_button.click()
    expected = pipe.variations(picked, n=2, guidance_scale=3.0, steps=3, seed=0)
    assert torch.equal(play.result.tensors, expected.tensors) and play.progress.value == 1
    play.colour.value = "blue"
    source = play.result.tensors[1:2]
    play.recolour_button.click()
    target = "a blue striped mug on a wooden table"
    assert play.source_prompts == [target] * 2 and play.status.value == ""
    expected = pipe.text_diff(source, PROMPTS[0], target, amount=[0.3, 0.6], steps=3, seed=0)
    assert torch.equal(play.result.tensors, expected.tensors)


def test_playground_reports_bad_prompts_instead_of_raising(pipe):
    play = PromptPlayground(pipe, prompt="a purple unicorn", n=2, steps=3, prior_steps=3)
    assert play.generate() is False
    assert "unicorn" in play.status.value and play.result is None
    play.variations_button.click()
    assert "press Generate first" in play.status.value


def test_widgets_refuse_zero_pictures_and_bad_settings_with_a_clear_message(pipe):
    gd = GaussianDiffusion(cosine_betas(50), data_type="continuous")
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=0, steps=2)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        DenoisingExplorer.for_points(gd, shrink, n=0, steps=2)
    with pytest.raises(ValueError, match=r"shape must be \(N, 3, H, W\) with every size >= 1"):
        DenoisingExplorer.for_images(gd, shrink, (0, 3, 8, 8), steps=2)
    with pytest.raises(ValueError, match="no points or pictures"):
        DenoisingExplorer([torch.zeros(0, 2)] * 2, [torch.zeros(0, 2)] * 2, [1, 0])
    with pytest.raises(ValueError, match="seed must be an int"):
        DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=1, steps=2, seed=-1)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        DenoisingExplorer.for_images(gd, shrink, (1, 3, 8, 8), steps=2, eta=float("nan"))
    for bad, match in [
        (dict(n=0), r"n must be an int in \[1, 64\] \(pictures per click"),  # was a TraitError from the dropdown
        (dict(n=65), r"n must be an int in \[1, 64\]"),
        (dict(seed=2**63), "seed must be an int"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0"),
        (dict(steps=0), "steps must be an int >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            PromptPlayground(pipe, **bad)
    play = PromptPlayground(pipe, n=1, steps=200, guidance_scale=10.0, prior_steps=3)
    assert play.steps.value == 200 and play.guidance.value == 10.0  # the sliders reach the values given
    play.seed.value = -1
    assert play.generate() is False and "seed must be an int" in play.status.value


def test_image_explorer_matches_generate_beyond_one_seed_block(pipe):
    from dalle2_edu.pipeline import SEED_BLOCK

    n = SEED_BLOCK + 2
    # a deterministic sampler: generate draws a stochastic one's step noise block by block, the explorer in one go
    explorer = DenoisingExplorer.for_prompt(pipe, PROMPTS[0], n=n, steps=2, seed=1, sampler="ddim")
    final = pipe.generate(PROMPTS[0], n=n, steps=2, seed=1, upsample=False, sampler="ddim").tensors
    assert torch.allclose(explorer.states[-1].clamp(-1, 1), final, atol=1e-4)


def test_recoloured_prompt():
    assert (
        recoloured_prompt("a red striped mug on a wooden table", "orange") == "an orange striped mug on a wooden table"
    )
    assert recoloured_prompt("an orange cap", "red") == "a red cap"
    assert recoloured_prompt("blue cap with dots, white background", "green") == "green cap with dots, white background"
    with pytest.raises(ValueError, match="names no colour"):
        recoloured_prompt("a striped mug", "red")
    with pytest.raises(ValueError, match="unknown colour"):
        recoloured_prompt("a red mug", "mauve")
