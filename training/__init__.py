"""Training scripts of TokenSet and TokenBridge, launched with `accelerate launch training/<script>.py`.

The scripts share one training loop, `training.training_utils.run_training` (accelerator, EMA, resume, unreadable
samples, logging, evaluation, checkpoints, final save, model card, Hub upload, run summary); `training.config` holds
the typed configuration (YAML presets + flags, `RunArguments`), `training.checkpointing` the atomic rotating
checkpoints, `training.data` the datasets and deterministic per-process batching, `training.discriminator` and
`training.image_losses` the autoencoders' GAN and image losses. See `training/README.md`.
"""
