"""benchmarks/three_roads.py end to end in its --tiny smoke mode (tiny nets, a few steps, a few pictures)."""

import json
import math

import pytest
import torch
from bench_scripts import load_benchmark

ROADS = ("autoregressive", "pixel_diffusion", "latent_diffusion", "unclip_shipped")
NUMBERS = ("generator_params", "fid", "fid_floor", "kid", "kid_std", "seconds_per_picture")
MAYBE_NULL = ("vqvae_params", "train_seconds", "train_steps", "vqvae_train_seconds", "bits_per_dim")


def _load():
    return load_benchmark("three_roads")


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_fidelity(d: dict) -> None:
    for attr in ("category", "colour", "pattern"):
        assert _finite(d[attr]) and 0.0 <= d[attr] <= 1.0, d
    assert d["n"] > 0


def test_tiny_run_writes_every_road_and_field(tmp_path, _one_thread):
    bench = _load()
    out, ship = tmp_path / "run", tmp_path / "roads"
    report = bench.main(["--tiny", "--threads", "1", "--no-progress", "--out", str(out), "--ship", "--ship-dir",
                         str(ship)])  # fmt: skip
    saved = json.loads((out / "three_roads.json").read_text())
    assert saved["roads"].keys() == report["roads"].keys() == set(ROADS)

    for name in ROADS:
        row = saved["roads"][name]
        for key in NUMBERS:
            assert _finite(row[key]), (name, key, row[key])
        for key in MAYBE_NULL:
            assert key in row and (row[key] is None or _finite(row[key])), (name, key, row.get(key))
        _check_fidelity(row["fidelity_seen"])
        _check_fidelity(row["fidelity_heldout"])
        assert row["generator_params"] > 0 and row["seconds_per_picture"] > 0
        if row["bits_per_dim"] is None:
            assert row["bits_per_dim_why"]  # a null says why
        else:
            assert row["bits_per_dim"] > 0
        assert name.replace("_", " ") in saved["markdown"]

    roads = saved["roads"]
    assert roads["autoregressive"]["bits_per_dim"] is not None and roads["pixel_diffusion"]["bits_per_dim"] is not None
    assert roads["latent_diffusion"]["bits_per_dim"] is None
    for name in ("autoregressive", "latent_diffusion"):  # the VQ-VAE's params and time are stated beside them
        assert roads[name]["vqvae_params"] == saved["vqvae"]["params"] > 0
        assert roads[name]["vqvae_train_seconds"] == saved["vqvae"]["training"]["train_seconds"]
    for name in ("autoregressive", "latent_diffusion", "pixel_diffusion"):
        t = roads[name]["training"]
        assert t["steps"] >= 1 and t["steps"] == roads[name]["train_steps"] and t["stopped_by"]
    assert roads["pixel_diffusion"]["vqvae_params"] is None
    assert "shipped, trained for" in saved["markdown"] and roads["unclip_shipped"]["trained"]["summary"]

    vq = saved["vqvae"]
    for key in ("params", "psnr_db", "perplexity", "codes_used", "decoder_bits_per_dim", "fid", "kid"):
        assert _finite(vq[key]), (key, vq[key])
    _check_fidelity(vq["fidelity_recon_seen"])
    _check_fidelity(vq["fidelity_recon_heldout"])
    real = saved["real_pictures"]
    assert _finite(real["fid"]) and _finite(real["kid"])
    _check_fidelity(real["fidelity_seen"])

    # every trained model saved with its JSON, shipped copies small, and loadable
    from dalle2_edu.stages.autoregressive import load_autoregressive
    from dalle2_edu.stages.vqvae import load_vqvae

    for name in bench.TRAINED:
        assert (ship / f"{name}.safetensors").is_file() and (ship / f"{name}.json").is_file()
        assert json.loads((ship / f"{name}.json").read_text())["trained_against"]["upstream"]["clip"]
    assert saved["shipped"]["bytes"] < 10e6
    vqvae, ar = load_vqvae(ship / "vqvae.safetensors"), load_autoregressive(ship / "autoregressive.safetensors")
    assert ar.config.codebook_size == vqvae.config.codebook_size


def test_arguments_are_checked():
    bench = _load()
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--ship"])  # smoke weights never go into data/checkpoints/roads
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "vqvae=0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--minutes", "0"])
    args = bench.parse_args(["--steps", "vqvae=3,pixel_diffusion=2"])
    assert args.fixed_steps == {"vqvae": 3, "pixel_diffusion": 2} and args.minutes == bench.FULL["minutes"]
    assert args.json == "docs/benchmarks/three_roads.json" and args.out == "runs/three_roads"
