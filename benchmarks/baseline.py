"""The baseline sampling path of the benchmarks: what the original computes, the way it computes it.

- the transformer in float32, eager (no bf16, no `torch.compile`);
- guidance as separate elementwise operations on the doubled batch's two softmaxes;
- every FSDD step materialises the full `(batch_size, codebook_size, num_tokens)` discretised Gaussian of the
  transition, draws from it and adjusts the draw with the tensor.

Its outputs are the fast path's (`TokenSetPipeline` with `FSDDScheduler.step`) for the same generators, up to float32
rounding; `tests/test_scheduler.py` checks that, step by step.
"""

import torch

from tokenset_diffusers.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.set_ops import greedy_adjust, sample_categorical, sample_fixed_sum_noise


def baseline_step(
    scheduler: FSDDScheduler, probs: torch.Tensor, timestep, sample: torch.LongTensor, generator=None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`(prev_sample, pred_original_sample)` of one FSDD step through the full transition tensor."""
    config = scheduler.config
    adjust = scheduler._adjusts(scheduler.step_index_for(timestep))
    probs = probs.float()  # (B, C, M+1)
    original = sample_categorical(scheduler._filter(probs, config.x0_sampling), generator=generator)  # (B, C)
    if adjust:
        original = greedy_adjust(original, probs, config.num_tokens, exact=config.exact_sum)
    return baseline_next_sample(scheduler, sample, original, timestep, generator), original


def baseline_next_sample(scheduler: FSDDScheduler, sample, original, timestep, generator=None) -> torch.LongTensor:
    """The x_t draw of a step and its adjustment, through the materialised (B, C, M) transition."""
    config = scheduler.config
    adjust = scheduler._adjusts(scheduler.step_index_for(timestep))
    transition = scheduler.transition_probs(sample, original, timestep)  # (B, C, M), materialised
    prev_sample = sample_categorical(scheduler._filter(transition, config.xt_sampling), generator=generator)
    if config.xt_sampling == "multinomial" or adjust or config.exact_sum:
        prev_sample = greedy_adjust(prev_sample, transition, config.num_tokens, exact=config.exact_sum)
    return prev_sample


def baseline_guided_probabilities(transformer, sample, timestep, class_labels, scale: float) -> torch.Tensor:
    """Guided probabilities with the original's separate operations (several full-size temporaries)."""
    batch_size = sample.shape[0]
    null_labels = torch.full_like(class_labels, transformer.config.num_classes)
    timesteps = torch.full((2 * batch_size,), float(timestep), device=sample.device)
    logits = transformer(torch.cat([sample, sample]), timesteps, torch.cat([class_labels, null_labels])).logits
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
    from tokenset_diffusers.pipeline_tokenset import _guidance_schedule

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
