"""Training scripts for TokenSet (both stages), launched with `accelerate launch training/<script>.py`.

Shared code lives in `training.common` (configuration parsing, accelerator, EMA, checkpoints, summaries),
`training.data` (datasets, augmentation, deterministic per-process batching) and `training.discriminator`
(PatchGAN and its losses). See `training/README.md`.
"""
