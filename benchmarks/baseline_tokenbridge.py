"""The baseline TokenBridge sampling path of the benchmarks: what the original computes, the way it computes it.

- guidance as two separate passes through the MAE encoder and decoder per step (conditional, then unconditional),
  not one batched pass;
- the channel head recomputing its whole prefix for each of the channels (`sample_channels(use_cache=False)`), no
  KV cache;
- float32, eager.

For the same generators it draws the same orders and tokens as `TokenBridgePipeline` (the fast path: one batched
guidance pass, the head's KV cache), up to float rounding; `tests/tokenbridge/test_tokenbridge_sampling_speed.py` checks that.
"""

import torch


@torch.no_grad()
def baseline_sample_indices(
    pipeline,
    class_labels: torch.LongTensor,
    num_inference_steps: int,
    guidance_scale: float,
    temperature: float,
    generator=None,
    guidance_schedule: str = "linear",
) -> torch.LongTensor:
    """The original's `sample_tokens` loop on `pipeline`'s transformer and scheduler: `(B, L, C)` level indices."""
    transformer, scheduler = pipeline.transformer, pipeline.scheduler
    device = class_labels.device
    batch_size, channels = class_labels.shape[0], transformer.config.latent_channels
    unconditional_labels = torch.full_like(class_labels, transformer.config.num_classes)
    scheduler.set_timesteps(num_inference_steps)
    orders = scheduler.sample_orders(batch_size, generator, device=device)  # (B, L)
    indices = torch.zeros(batch_size, transformer.num_tokens, channels, dtype=torch.long, device=device)
    for step_index in range(num_inference_steps):
        values = transformer.quantizer.dequantize(indices)  # (B, L, C)
        mask = scheduler.mask(orders, step_index)  # (B, L)
        num_masked = scheduler.num_unknown[step_index]
        features = transformer.conditions(values, mask, class_labels, num_masked).float()  # (B, L, D): pass 1
        if guidance_scale != 1.0:
            unconditional = transformer.conditions(values, mask, unconditional_labels, num_masked).float()  # pass 2
            weight = scheduler.guidance_weight(step_index, guidance_scale, guidance_schedule)
            features = unconditional + weight * (features - unconditional)
        positions = scheduler.positions_to_predict(orders, step_index)  # (B, n)
        features = features.gather(1, positions[:, :, None].expand(-1, -1, features.shape[-1]))  # (B, n, D)
        tokens = transformer.sample_channels(
            features.reshape(-1, features.shape[-1]), temperature=temperature, generator=generator, use_cache=False
        )  # (B * n, C)
        indices, _ = scheduler.step(tokens.reshape(batch_size, -1, channels), step_index, indices, orders, False)
    return indices


@torch.no_grad()
def baseline_images(pipeline, indices: torch.LongTensor) -> torch.Tensor:
    """Decode as the original: dequantize, unpatchify, divide by the scaling factor, VAE decode: `(B, 3, H, W)`."""
    transformer, vae = pipeline.transformer, pipeline.vae
    latents = transformer.unpatchify(transformer.quantizer.dequantize(indices))  # (B, C, h, w), scaled units
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
