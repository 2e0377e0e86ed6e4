"""Synthetic pre-training data from a conditional 3D latent diffusion model (Pinaya et al.).

- ``covariates``: CSF/brain volume measured from the arrays, [0, 1] scaling, covariate draws
- ``pool``: the processed upstream pool (never downstream subjects), held-out subjects
- ``networks``: MONAI AutoencoderKL / DiffusionModelUNet, concatenation + cross-attention
- ``training``: the two Lightning stages (autoencoder, latent diffusion), dvclive logging
- ``sampling``: batched DDIM sampling (LatentDiffusionInferer), grid resampling
- ``bundle``: loading the MONAI model-zoo brain LDM weights (old GenerativeModels layout)
- ``quality``: reconstruction, diversity, realism, memorisation and conditioning checks
- ``report``: pictures; ``store``: model folder, BIDS-like dataset and its participants table

The ``synthesize`` stage that runs them end to end is :mod:`neurotransfer.stages.synthesize`.
"""
