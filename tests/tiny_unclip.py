"""Tiny, untrained (perturbed) unCLIP stages written to a folder: for pipeline, edit and widget tests."""

import torch

from dalle2_edu.nets.unet import UNetConfig
from dalle2_edu.pipeline import CHECKPOINT_FILES
from dalle2_edu.stages.clip import CLIPConfig, ProductCLIP, build_vocabulary, save_clip
from dalle2_edu.stages.decoder import CLIPDecoder, DecoderConfig, save_decoder
from dalle2_edu.stages.prior import DiffusionPrior, PriorConfig, save_prior
from dalle2_edu.stages.upsampler import Upsampler, UpsamplerConfig, save_upsampler

D, W = 16, 32
PROMPTS = ["a red striped mug on a wooden table", "blue cap with dots, white background"]


def perturbed(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def write_tiny_checkpoints(path):
    """CLIP (d = 16), prior, 8×8 decoder and 8→16 upsampler, 20 diffusion steps each, saved under ``path``."""
    torch.manual_seed(0)
    vocab, words = build_vocabulary(PROMPTS + ["a green lamp on light grey", "black handbag, plain"])
    clip = ProductCLIP(CLIPConfig(embed_dim=D, vision_width=32, vision_layers=1, vision_heads=2, text_width=W,
                                  text_layers=1, text_heads=2, vocab=vocab, words=words))  # fmt: skip
    save_clip(clip, path / CHECKPOINT_FILES["clip"])
    prior_cfg = PriorConfig(embed_dim=D, token_dim=W, diffusion={"num_timesteps": 20},
                            transformer=dict(width=16, num_layers=1, num_heads=2, max_text_tokens=32))  # fmt: skip
    save_prior(perturbed(DiffusionPrior(prior_cfg)), path / CHECKPOINT_FILES["prior"])
    dec_cfg = DecoderConfig(unet=UNetConfig.tiny(image_size=8).to_dict(), clip_dim=D, cond_dim=16, context_dim=16,
                            diffusion={"num_timesteps": 20})  # fmt: skip
    save_decoder(perturbed(CLIPDecoder(dec_cfg)), path / CHECKPOINT_FILES["decoder"])
    up_unet = UNetConfig.tiny(image_size=16, attention_resolutions=(), low_res_channels=3).to_dict()
    up_cfg = UpsamplerConfig(unet=up_unet, diffusion={"num_timesteps": 20}, crop_size=8)
    save_upsampler(perturbed(Upsampler(up_cfg)), path / CHECKPOINT_FILES["upsampler"])
    return path
