"""The stages: each file holds one trained model's config, network wrapper, ``prepare`` (what its diffusion loss
sees) and a thin ``sample``; how each trains under a recipe and is graded lives in :mod:`dalle2_edu.recipes`.

* :mod:`~dalle2_edu.stages.toy2d`: 2D points (notebooks 01-04)
* :mod:`~dalle2_edu.stages.attributes`: 32×32 pictures from attribute labels (notebooks 05-07)
* :mod:`~dalle2_edu.stages.clip`: the tiny CLIP on open_clip (notebook 08)
* :mod:`~dalle2_edu.stages.decoder`: pictures from CLIP image embeddings, with guidance (notebook 09)
* :mod:`~dalle2_edu.stages.prior`: CLIP image embeddings from text (notebook 10)
* :mod:`~dalle2_edu.stages.upsampler`: 32 → 64 (notebook 12)
* :mod:`~dalle2_edu.stages.vqvae`: 32×32 pictures ↔ 8×8 codebook tokens, shared by the two latent roads
* :mod:`~dalle2_edu.stages.autoregressive`: caption → image tokens with a causal transformer (DALL·E's road)
* :mod:`~dalle2_edu.stages.latent`: latent diffusion on the VQ-VAE's latents (the third road)
"""
