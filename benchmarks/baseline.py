"""The baseline sampling path of the benchmarks: what the original computes, the way it computes it.

- the transformer in float32, eager (no bf16, no `torch.compile`);
- guidance as separate elementwise operations on the doubled batch's two softmaxes;
- every FSDD step materialises the full `(batch_size, codebook_size, num_tokens)` discretised Gaussian of the
  transition, draws from it and adjusts the draw with the tensor.

Its outputs are the fast path's (`TokenSetPipeline` with `FSDDScheduler.step`) for the same generators, up to float32
rounding; `tests/tokenset/test_scheduler.py` checks that, step by step.
"""

import torch

from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.set_ops import greedy_adjust, quantize_to_sum, sample_fixed_sum_noise
from tokenset_diffusers.utils.sampling import sample_categorical


def baseline_step(
    scheduler: FSDDScheduler, probs: torch.Tensor, timestep, sample: torch.LongTensor, generator=None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`(prev_sample, pred_original_sample)` of one FSDD step through the full transition tensor."""
    config = scheduler.config
    adjust = scheduler._adjusts(scheduler.step_index_for(timestep))
    tie_break = "random" if config.exact_sum else "index"
    probs = probs.float()  # (B, C, M+1)
    original = sample_categorical(scheduler._filter(probs, config.x0_sampling), generator=generator)  # (B, C)
    if adjust:
        original = greedy_adjust(
            original, probs, config.num_tokens, exact=config.exact_sum, tie_break=tie_break, generator=generator
        )
    return baseline_next_sample(scheduler, sample, original, timestep, generator), original


def original_transition_pdf(mean: torch.Tensor, std: torch.Tensor, num_values: int) -> torch.Tensor:
    """The original's discretised Gaussian `(B, C, M)`: `exp(-(k - mean)^2 / (2 std^2)) / std`, normalised, in
    float32. Where every term underflows to 0 the row of the pdf is 0/0 = NaN, as in the original."""
    values = torch.arange(num_values, dtype=torch.float32, device=mean.device)  # (M,)
    mean, std = mean.float()[..., None], std.float()[..., None]  # (B, C, 1)
    pdf = torch.exp(-((values - mean) ** 2) / (2 * std**2)) / std  # (B, C, M)
    return pdf / pdf.sum(-1, keepdim=True)


def baseline_next_sample(scheduler: FSDDScheduler, sample, original, timestep, generator=None) -> torch.LongTensor:
    """The x_t draw of a step and its adjustment, through the materialised (B, C, M) transition; where the original's
    pdf is NaN anywhere in the batch (its `torch.multinomial` raises), the whole batch takes the original's fallback,
    the fixed-sum rounding of the mean (one host synchronisation per step, as the original's exception)."""
    config = scheduler.config
    index = scheduler.step_index_for(timestep)
    adjust = scheduler._adjusts(index)
    tie_break = "random" if config.exact_sum else "index"
    mean, std = scheduler._transition_mean_std(sample, original, index)  # (B, C)
    transition = original_transition_pdf(mean, std, config.num_tokens)  # (B, C, M), materialised
    collapsed_rows = transition.isnan().flatten(1).any(-1)[:, None]  # (B, 1)
    safe = torch.nan_to_num(transition, nan=1.0)  # the draw below is discarded where the original raises
    prev_sample = sample_categorical(scheduler._filter(safe, config.xt_sampling), generator=generator)
    # The original's fallback (computed in every step only so that both paths use their random streams alike).
    rounded = quantize_to_sum(mean, config.num_tokens, tie_break=tie_break, generator=generator)
    if not config.exact_sum:
        if config.xt_sampling == "multinomial" or adjust:
            prev_sample = greedy_adjust(prev_sample, safe, config.num_tokens, generator=generator)
        # The original's bare `except:` around the draw: the whole batch falls back (decided on the device here, so
        # that the memory benchmark can run this on the meta device; the original reads it on the host).
        return torch.where(collapsed_rows.any(), rounded, prev_sample)
    # The exact mode (not in the original): row by row, as `FSDDScheduler.step`.
    prev_sample = torch.where(collapsed_rows, rounded, prev_sample)
    prev_sample = greedy_adjust(
        prev_sample, safe, config.num_tokens, exact=True, tie_break=tie_break, generator=generator
    )
    keep_rounded = collapsed_rows & (rounded.sum(-1, keepdim=True) == config.num_tokens)
    return torch.where(keep_rounded, rounded, prev_sample)


def baseline_add_noise(scheduler: FSDDScheduler, data, noise, timesteps, generator=None) -> torch.LongTensor:
    """The training noiser through the materialised (B, C, M) pdf of the original, drawn and adjusted with it."""
    num_tokens = scheduler.config.num_tokens
    time = timesteps.float()[:, None]  # (B, 1)
    mean = time * data + (1 - time) * noise  # (B, C)
    pdf = original_transition_pdf(mean, (noise - data).abs() / 4 + 1e-6, num_tokens)  # (B, C, M)
    return greedy_adjust(sample_categorical(pdf, generator=generator), pdf, num_tokens)


def baseline_guided_probabilities(transformer, sample, timestep, class_labels, scale: float) -> torch.Tensor:
    """Guided probabilities with the original's separate operations (several full-size temporaries)."""
    batch_size = sample.shape[0]
    null_labels = torch.full_like(class_labels, transformer.config.num_classes)
    timesteps = torch.full((2 * batch_size,), float(timestep), device=sample.device)
    logits = transformer(torch.cat([sample, sample]), timesteps, torch.cat([class_labels, null_labels])).logits
    return baseline_guidance(logits, scale)


def baseline_guidance(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """The original's guidance on the doubled batch's logits `(2B, C, M+1)`: separate full-size operations."""
    batch_size = logits.shape[0] // 2
    probs = logits.float().softmax(-1)
    cond, uncond = probs[:batch_size], probs[batch_size:]
    guided = uncond + scale * (cond - uncond)
    guided = torch.where(guided < 0, torch.zeros_like(guided), guided)
    return guided / guided.sum(-1, keepdim=True)


@torch.no_grad()
def baseline_sample_counts(
    transformer,
    scheduler: FSDDScheduler,
    class_labels: torch.LongTensor,
    num_inference_steps: int,
    guidance,
    generator,
) -> torch.LongTensor:
    """Count vectors `(batch_size, codebook_size)` sampled along the baseline path (`guidance`: a constant scale or
    an interval schedule, as the pipeline takes it)."""
    from tokenset_diffusers.tokenset.pipeline_tokenset import _guidance_schedule

    schedule = _guidance_schedule(guidance, "guidance")
    config = scheduler.config
    device = class_labels.device
    batch_size = class_labels.shape[0]
    sample = sample_fixed_sum_noise(batch_size, config.codebook_size, config.num_tokens, generator, device)
    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        t = float(t)
        scale = schedule[max(i for i in range(len(schedule)) if t >= i / len(schedule))]
        probs = baseline_guided_probabilities(transformer, sample, t, class_labels, scale)
        sample, _ = baseline_step(scheduler, probs, t, sample, generator)
    return sample


def original_dit_forward(
    state_dict: dict[str, torch.Tensor], counts: torch.LongTensor, t: torch.Tensor, y: torch.LongTensor, num_heads: int
) -> torch.Tensor:
    """The original DiT-1D's forward (docs/tokenset.md#transformer) on its own state dict, the way its modules compute
    it: embedding tables, the sinusoidal timestep MLP, adaLN-Zero blocks with fused qkv + scaled dot-product attention
    and a tanh-GELU MLP, the final layer; float32, eager. Returns logits `(B, C, M + 1)`."""
    import math

    import torch.nn.functional as F

    def linear(x, name):
        return F.linear(x, state_dict[f"{name}.weight"], state_dict[f"{name}.bias"])

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    x = state_dict["x_embedder.embedding_table.weight"][counts] + state_dict["pos_embed"]  # (B, C, D)
    batch_size, length, width = x.shape
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 256), cos first
    t_emb = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + state_dict["y_embedder.embedding_table.weight"][y]  # (B, D)
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
    head_dim = width // num_heads
    for i in range(depth):
        block = f"blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = linear(
            F.silu(c), f"{block}.adaLN_modulation.1"
        ).chunk(6, dim=1)
        h = modulate(F.layer_norm(x, (width,), eps=1e-6), shift_msa, scale_msa)
        qkv = linear(h, f"{block}.attn.qkv").reshape(batch_size, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, C, head_dim)
        attended = linear(attended.transpose(1, 2).reshape(batch_size, length, width), f"{block}.attn.proj")
        x = x + gate_msa.unsqueeze(1) * attended
        h = modulate(F.layer_norm(x, (width,), eps=1e-6), shift_mlp, scale_mlp)
        h = linear(F.gelu(linear(h, f"{block}.mlp.fc1"), approximate="tanh"), f"{block}.mlp.fc2")
        x = x + gate_mlp.unsqueeze(1) * h
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    x = modulate(F.layer_norm(x, (width,), eps=1e-6), shift, scale)
    return linear(x, "final_layer.linear")  # (B, C, M + 1)
