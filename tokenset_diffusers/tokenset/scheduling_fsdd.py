"""Fixed-Sum Discrete Diffusion (FSDD), the sampler and training noiser of TokenSet, as a diffusers scheduler.

Time follows the released checkpoints: t = 0 is noise (a random token set), t = 1 is data. A sample is a count vector
`(batch_size, codebook_size)` of non-negative integers summing to `num_tokens`.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Literal, Optional, Tuple, Union

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..utils.sampling import GeneratorType, filter_probs, sample_categorical, sample_filtered
from ..utils.validation import check_choice, check_integer, check_limit, check_number, checks_values, described
from .set_ops import (
    DiscretizedGaussian,
    active_positions,
    discretized_gaussian,
    greedy_adjust,
    original_pdf_collapses,
    quantize_to_sum,
)


# Sampling modes for x0 and x_t; "multinomial" draws from the unfiltered distribution.
SAMPLING_MODES = ("top_p", "top_k", "multinomial")
SIGMA_SCHEDULES = ("sigmoid", "constant")
# How far a row of `model_output` may sum from 1 (float32 / bf16 softmax rounding stays far below it).
PROBS_SUM_TOLERANCE = 1e-2


@dataclass
class FSDDSchedulerOutput(BaseOutput):
    """Output of [`FSDDScheduler.step`].

    Args:
        prev_sample (`torch.LongTensor` of shape `(batch_size, codebook_size)`):
            the sample at the next time, to feed the model at the next step.
        pred_original_sample (`torch.LongTensor` of shape `(batch_size, codebook_size)`):
            the count vector x0 drawn from the model's prediction at this step.
    """

    prev_sample: torch.LongTensor
    pred_original_sample: torch.LongTensor


class FSDDScheduler(SchedulerMixin, ConfigMixin):
    """Fixed-Sum Discrete Diffusion over count vectors.

    Each step draws a clean count vector x0 from the model's per-position distribution over the M+1 count values
    (optionally top-p / top-k filtered, and moved back to the fixed sum by [`greedy_adjust`] from `adjust_start` on),
    estimates the noise x1 implied by the current sample, and draws the next sample from a discretised Gaussian
    between them, whose width shrinks with the sigma schedule; the draw is adjusted back to the sum M. Where that
    Gaussian has collapsed (its width is tiny next to the mean's distance from every integer, which is the case for
    every row in the last steps of the released schedule: steps 21, 22 and 23 of 25), the original cannot draw from
    it and rounds the mean to the fixed sum ([`quantize_to_sum`]) instead; so does this scheduler, row by row.

    The defaults are the released sampling settings of the paper's ImageNet models.

    Args:
        codebook_size (`int`, defaults to 4096): C, the length of a count vector.
        num_tokens (`int`, defaults to 128): M, the sum of every count vector.
        sigma_schedule (`str`, defaults to `"sigmoid"`): `"sigmoid"` or `"constant"`, the factor f(i) on the
            transition's width at step i of N: `sigmoid(-sigmoid_slope * ((i + 1) / N - sigmoid_midpoint))`, or 1.
        sigmoid_slope (`float`, defaults to 100.0): see `sigma_schedule` (the original's "sigmoid100_0.8").
        sigmoid_midpoint (`float`, defaults to 0.8): see `sigma_schedule`.
        adjust_start (`float`, defaults to 0.65): from this t on, the drawn x0 is adjusted to sum to M (and so is a
            filtered x_t draw).
        x0_sampling (`str`, defaults to `"top_p"`): how x0 is drawn: `"top_p"`, `"top_k"` or `"multinomial"`
            (unfiltered).
        top_p (`float`, defaults to 0.8): the top-p filter's mass, for x0 and x_t.
        top_k (`int`, defaults to 2): the top-k filter's k, for x0 and x_t.
        xt_sampling (`str`, defaults to `"multinomial"`): how x_t is drawn: `"multinomial"`, `"top_p"` or
            `"top_k"`; a multinomial draw is always adjusted to the sum M, a filtered one from `adjust_start` on.
        exact_sum (`bool`, defaults to `False`): `False` reproduces the original, whose one-shot adjustment does not
            always restore the sum and breaks ties between equal adjustment gains (and equal fractional parts in the
            fixed-sum rounding) by position. `True` uses the exact adjustment everywhere and adjusts every x_t, so
            every `prev_sample` and every `add_noise` output sums to M, and breaks those ties at random (drawn
            with `generator`), so that no codebook position is favoured.
    """

    order = 1
    # diffusers' scheduler interface: the noise prior (a random token set) is used as drawn, unscaled.
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 4096,
        num_tokens: int = 128,
        sigma_schedule: Literal["sigmoid", "constant"] = "sigmoid",
        sigmoid_slope: float = 100.0,
        sigmoid_midpoint: float = 0.8,
        adjust_start: float = 0.65,
        x0_sampling: Literal["top_p", "top_k", "multinomial"] = "top_p",
        top_p: float = 0.8,
        top_k: int = 2,
        xt_sampling: Literal["multinomial", "top_p", "top_k"] = "multinomial",
        exact_sum: bool = False,
    ):
        check_integer("codebook_size", codebook_size, low=1)
        check_integer("num_tokens", num_tokens, low=1)
        check_number("sigmoid_slope", sigmoid_slope, low=0.0, low_open=True)
        check_number("sigmoid_midpoint", sigmoid_midpoint)
        check_number("adjust_start", adjust_start, low=0.0, high=1.0)
        if not isinstance(exact_sum, bool):
            raise ValueError(f"`exact_sum` must be True or False, got {described(exact_sum)}.")
        check_choice("sigma_schedule", sigma_schedule, SIGMA_SCHEDULES)
        check_choice("x0_sampling", x0_sampling, SAMPLING_MODES)
        check_choice("xt_sampling", xt_sampling, SAMPLING_MODES)
        check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        check_integer("top_k", top_k, low=1, high=num_tokens, high_name="num_tokens")
        self.num_inference_steps = None
        self.timesteps = None
        self._time_grid = None
        self._collapsing_steps = frozenset()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Returns `sample` unchanged: the model takes count vectors as they are (diffusers' scheduler interface)."""
        return sample

    # ------------------------------------------------------------------ sampling

    def set_timesteps(self, num_inference_steps: int, device: Optional[Union[str, torch.device]] = None):
        """Sets the N sampling times `timesteps = [0, 1/N, ..., (N-1)/N]` (t = 0 is noise), in sampling order.

        The schedule costs about 0.1 ms per step (each step's collapse test), so N is bounded by
        `LIMITS["inference_steps"]` (10,000 by default, see `tokenset_diffusers/utils/validation.py`).

        Raises:
            `ValueError` unless `num_inference_steps` is an integer in `[1, LIMITS["inference_steps"]]`.
        """
        num_inference_steps = check_integer("num_inference_steps", num_inference_steps, low=1)
        check_limit("num_inference_steps", num_inference_steps, "inference_steps")
        self.num_inference_steps = num_inference_steps
        # The original's grid: linspace(0, 1, N + 1) in float32; step i goes from grid[i] to grid[i + 1].
        self._time_grid = torch.linspace(0, 1, num_inference_steps + 1, dtype=torch.float32)
        self.timesteps = self._time_grid[:-1].to(device)
        # Decided once per schedule, not in every step.
        self._collapsing_steps = frozenset(i for i in range(num_inference_steps) if self.collapses_at(i))

    def step_index_for(self, timestep: Union[float, torch.Tensor]) -> int:
        """The index i of `timestep` in `timesteps` (raises if it is not one of them)."""
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps(num_inference_steps)` before `step` or `transition_probs`.")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(
                    f"`timestep` must be one time (a float or a one-element tensor), got a tensor of shape "
                    f"{tuple(timestep.shape)}."
                )
            timestep = timestep.item()
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real) or not math.isfinite(timestep):
            raise ValueError(
                f"`timestep` must be one of the {self.num_inference_steps} sampling times i / N set by "
                f"`set_timesteps`, got {timestep!r}."
            )
        index = round(timestep * self.num_inference_steps)
        if not 0 <= index < self.num_inference_steps or abs(timestep * self.num_inference_steps - index) > 1e-3:
            raise ValueError(
                f"`timestep`={timestep} is not one of the {self.num_inference_steps} sampling times i / N set by "
                "`set_timesteps`."
            )
        return index

    def sigma_scale(self, step_index: int) -> float:
        """The sigma schedule's factor f(i) for step `step_index` of `num_inference_steps`."""
        if self.config.sigma_schedule == "constant":
            return 1.0
        progress = (step_index + 1) / self.num_inference_steps
        x = -self.config.sigmoid_slope * (progress - self.config.sigmoid_midpoint)
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    def transition_probs(
        self,
        sample: torch.LongTensor,
        pred_original_sample: torch.LongTensor,
        timestep: Union[float, torch.Tensor],
    ) -> torch.FloatTensor:
        """The distribution that [`step`] draws the next sample from.

        With t = `timestep`, t' the next time, z = `sample` and x0 = `pred_original_sample`:
        `x1_hat = (z - t x0) / (1 - t)`, `mean = t' x0 + (1 - t') x1_hat`,
        `std = |x1_hat - x0| / 4 * f(i) + 1e-6`, discretised over the M values k = 0..M-1.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, codebook_size, num_tokens)`.
        """
        self._check_sample("sample", sample)
        self._check_sample("pred_original_sample", pred_original_sample)
        mean, std = self._transition_mean_std(sample, pred_original_sample, self.step_index_for(timestep))
        return discretized_gaussian(mean, std, self.config.num_tokens)  # (B, C, M)

    def _transition_mean_std(
        self, sample: torch.LongTensor, pred_original_sample: torch.LongTensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mean, std)`, each `(batch_size, codebook_size)`, of the transition at step `index`."""
        time = self._time_grid[index].item()  # the grid lives on the CPU: no device synchronisation
        next_time = self._time_grid[index + 1].item()
        current = sample.float()  # (B, C)
        original = pred_original_sample.float()  # (B, C)
        noise_estimate = (current - time * original) / (1 - time)  # (B, C)
        mean = next_time * original + (1 - next_time) * noise_estimate  # (B, C)
        std = (noise_estimate - original).abs() / 4 * self.sigma_scale(index) + 1e-6  # (B, C)
        return mean, std

    def _transition_pairs(
        self, sample: torch.LongTensor, original: torch.LongTensor, index: int
    ) -> Optional[tuple[torch.LongTensor, torch.Tensor, torch.Tensor]]:
        """The transition of step `index` depends only on the pair of counts (z, x0), each in [0, M]: `(pair index
        (B, C), table mean (P,), table std (P,))` over the P = (M + 1)^2 pairs (the table's values are those
        [`_transition_mean_std`] gives the positions: the same arithmetic), or None where the batch has fewer
        positions than pairs. Decided from shapes only: no host synchronisation."""
        num_values = self.config.num_tokens + 1
        if num_values**2 >= sample.numel():
            return None
        counts = torch.arange(num_values, device=sample.device)  # (M+1,)
        table_mean, table_std = self._transition_mean_std(
            counts.repeat_interleave(num_values)[None], counts.repeat(num_values)[None], index
        )  # (1, P) each: z = p // (M+1), x0 = p % (M+1)
        pair_index = sample.clamp(0, num_values - 1) * num_values + original.clamp(0, num_values - 1)  # (B, C)
        return pair_index, table_mean[0], table_std[0]

    def collapses_at(self, step_index: int) -> bool:
        """Whether the original's sampler falls back to the fixed-sum rounding for its whole batch at step
        `step_index`: whether a count that moves by one (|z - x0| = 1, as in nearly every row) has a collapsed
        transition there (see [`original_pdf_collapses`]). Decided from the schedule alone (on the CPU): the same for
        every row, whatever its batch mates. With the released schedule: steps 21, 22 and 23 of 25."""
        moves = torch.tensor([[1, 0, 2, 0, 2, 1]])  # z, and x0 below: the moves by one and by two, both ways
        originals = torch.tensor([[0, 1, 0, 2, 1, 2]])
        mean, std = self._transition_mean_std(moves, originals, step_index)
        return bool(original_pdf_collapses(mean, std, self.config.num_tokens))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.LongTensor,
        generator: GeneratorType = None,
        return_dict: bool = True,
    ) -> Union[FSDDSchedulerOutput, Tuple[torch.LongTensor, torch.LongTensor]]:
        """One FSDD step from `timestep` to the next sampling time.

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, codebook_size, num_tokens + 1)`):
                the model's probabilities over the count values at every position (guidance already applied).
            timestep (`float` or 0-d `torch.Tensor`): one of `timesteps`.
            sample (`torch.LongTensor` of shape `(batch_size, codebook_size)`): the current count vectors.
            generator (`torch.Generator` or a list of them, one per batch row, *optional*).
            return_dict (`bool`, defaults to `True`): return an [`FSDDSchedulerOutput`] rather than a tuple.

        Returns:
            [`FSDDSchedulerOutput`] or `(prev_sample, pred_original_sample)`.
        """
        config = self.config
        # The original's one-shot adjustment (and an unadjusted filtered x_t) can leave other sums; only the exact
        # mode promises, and so requires, the fixed sum.
        self._check_sample("sample", sample, fixed_sum=config.exact_sum)
        self._check_probs(model_output, sample)
        index = self.step_index_for(timestep)
        adjust = self._adjusts(index)
        probs = model_output.float()  # (B, C, M+1)

        # 1. Draw x0 from the (filtered) prediction; adjust it to the sum M late in sampling.
        original = self._draw(probs, config.x0_sampling, generator)  # (B, C)
        if adjust:
            original = greedy_adjust(
                original,
                probs,
                config.num_tokens,
                exact=config.exact_sum,
                tie_break="random" if config.exact_sum else "index",
                generator=generator,
            )

        # 2. Draw the next sample from the discretised Gaussian between the implied noise and x0.
        prev_sample = self._draw_next_sample(sample, original, index, adjust, generator)

        if not return_dict:
            return prev_sample, original
        return FSDDSchedulerOutput(prev_sample=prev_sample, pred_original_sample=original)

    def _adjusts(self, index: int) -> bool:
        """Whether step `index` adjusts its draws to the sum M (from `adjust_start` on); the grid is on the CPU."""
        return bool(self._time_grid[index] >= self.config.adjust_start)

    def _draw_next_sample(
        self, sample: torch.LongTensor, original: torch.LongTensor, index: int, adjust: bool, generator: GeneratorType
    ) -> torch.LongTensor:
        """The x_t draw of step `index` and its adjustment, computed on the CPU at the active positions only (where z
        or x0 is non-zero; elsewhere the transition is a point mass on 0), and on accelerators (where counting those
        would synchronise) once per pair of counts (z, x0), on which alone a position's transition depends: the same
        draws either way. An unfiltered draw and the adjustment need the transition only at a few values, so it is
        never materialised: memory stays O(B x C) (+ O((M + 1)^2 x M) for the pairs); a filtered draw materialises
        it at the active positions, (B, K, M) with K about 2M once x0 is adjusted (on accelerators at all of them).

        Rows whose transition has collapsed (the original's float32 pdf is 0/0 at some position) take the original's
        fallback instead of a draw: the fixed-sum rounding of the mean (`torch.where`, no host synchronisation). So
        does every row at the steps where the original's whole batch falls back ([`collapses_at`]: a count moving by
        one collapses there, as in nearly every row), so that a row whose own positions happen not to collapse
        there (possible when all its moves are multiples of 2, 3 or 4) is treated as in the original's batches,
        without depending on its batch mates."""
        config = self.config
        tie_break = "random" if config.exact_sum else "index"
        mean, std = self._transition_mean_std(sample, original, index)  # (B, C) each
        collapsed = original_pdf_collapses(mean, std, config.num_tokens)[:, None]  # (B, 1)
        if index in self._collapsing_steps:  # the original's whole batch falls back here: every row does
            collapsed = torch.ones_like(collapsed)
        # Where z and x0 are both 0 the transition is a point mass on 0: exponentials at the <= 2M positions of C
        # where either is not (once x0 is adjusted; before, where a drawn x0 is).
        active = active_positions((sample != 0) | (original != 0))  # (B, K), or None on accelerators
        # Otherwise (an accelerator, or most positions active): once per pair (z, x0), if there are fewer pairs.
        pairs = self._transition_pairs(sample, original, index) if active is None else None
        transition = DiscretizedGaussian(mean, std, config.num_tokens, active=active, pairs=pairs)
        if config.xt_sampling == "multinomial":
            prev_sample = transition.sample(generator=generator)  # (B, C)
        else:  # filtering needs the (B, K, M) probabilities of the active positions
            prev_sample = transition.sample_filtered(**self._filter_arguments(config.xt_sampling), generator=generator)
        rounded = quantize_to_sum(mean, config.num_tokens, tie_break=tie_break, generator=generator)  # (B, C)
        if config.xt_sampling == "multinomial" or adjust or config.exact_sum:
            # Collapsed rows enter at the fixed sum, so the adjustment leaves them alone (and costs nothing there).
            prev_sample = torch.where(collapsed, rounded, prev_sample)
            prev_sample = greedy_adjust(
                prev_sample,
                transition,
                config.num_tokens,
                exact=config.exact_sum,
                tie_break=tie_break,
                generator=generator,
            )
        if config.exact_sum:  # where the rounding cannot reach the sum (a mean far off it), the adjustment decides
            collapsed = collapsed & (rounded.sum(-1, keepdim=True) == config.num_tokens)
        return torch.where(collapsed, rounded, prev_sample)

    # ------------------------------------------------------------------ training

    def add_noise(
        self,
        original_samples: torch.LongTensor,
        noise: torch.LongTensor,
        timesteps: torch.Tensor,
        generator: GeneratorType = None,
    ) -> torch.LongTensor:
        """The training noiser: draws x_t between data x0 = `original_samples` and noise x1 = `noise`.

        `mean = t x0 + (1 - t) x1`, `std = |x1 - x0| / 4 + 1e-6`, discretised over k = 0..M-1, one draw per position,
        then adjusted to the sum M (one-shot as the original, or exactly with `exact_sum=True`).

        Args:
            original_samples (`torch.LongTensor` of shape `(batch_size, codebook_size)`): data count vectors, each
                summing to M (checked on the CPU; assumed on accelerators, where the draw works on the at most 2M
                positions where data or noise is non-zero).
            noise (`torch.LongTensor` of shape `(batch_size, codebook_size)`): from [`sample_fixed_sum_noise`], or
                any count vectors summing to M.
            timesteps (`torch.Tensor` of shape `(batch_size,)`): times in (0, 1] (t = 1 is data).
            generator (`torch.Generator` or a list of them, *optional*).

        Returns:
            `torch.LongTensor` of shape `(batch_size, codebook_size)`.
        """
        self._check_sample("original_samples", original_samples, fixed_sum=True)
        self._check_sample("noise", noise, fixed_sum=True)
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"`noise` must have the shape of `original_samples` {tuple(original_samples.shape)}, got "
                f"{tuple(noise.shape)}."
            )
        timesteps = torch.as_tensor(timesteps, dtype=torch.float32, device=original_samples.device)
        if timesteps.shape != (original_samples.shape[0],):
            raise ValueError(
                f"`timesteps` must have shape (batch_size,) = ({original_samples.shape[0]},), got "
                f"{tuple(timesteps.shape)}."
            )
        if checks_values(timesteps) and (
            torch.isnan(timesteps).any() or (timesteps <= 0).any() or (timesteps > 1).any()
        ):
            raise ValueError(f"`timesteps` must lie in (0, 1], got {timesteps.tolist()}.")
        time = timesteps[:, None]  # (B, 1)
        data = original_samples.float()  # (B, C)
        prior = noise.float()  # (B, C)
        mean = time * data + (1 - time) * prior  # (B, C)
        std = (prior - data).abs() / 4 + 1e-6  # (B, C)
        # Elsewhere a point mass on 0. Data and noise each sum to M, so at most 2M positions are active: on
        # accelerators that bound is the width (no synchronisation).
        active = active_positions((original_samples != 0) | (noise != 0), bound=2 * self.config.num_tokens)  # (B, K)
        pdf = DiscretizedGaussian(mean, std, self.config.num_tokens, active=active)  # never materialised (B, C, M)
        noisy = pdf.sample(generator=generator)  # (B, C)
        exact = self.config.exact_sum
        tie_break = "random" if exact else "index"
        return greedy_adjust(noisy, pdf, self.config.num_tokens, exact=exact, tie_break=tie_break, generator=generator)

    # ------------------------------------------------------------------ helpers

    def _filter_arguments(self, mode: str) -> dict:
        """The `top_p` / `top_k` arguments of a filtered sampling `mode`."""
        return {"top_p": self.config.top_p} if mode == "top_p" else {"top_k": self.config.top_k}

    def _draw(self, probs: torch.Tensor, mode: str, generator: GeneratorType) -> torch.LongTensor:
        """One draw per position from `probs` (B, C, V) filtered by `mode`, in one pass ([`sample_filtered`])."""
        if mode == "multinomial":
            return sample_categorical(probs, generator=generator)
        return sample_filtered(probs, **self._filter_arguments(mode), generator=generator)

    def _filter(self, probs: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "top_p":
            return filter_probs(probs, top_p=self.config.top_p)
        if mode == "top_k":
            return filter_probs(probs, top_k=self.config.top_k)
        return probs

    def _check_sample(self, name: str, sample: torch.Tensor, fixed_sum: bool = False) -> None:
        config = self.config
        if not isinstance(sample, torch.Tensor) or sample.ndim != 2 or sample.shape[1] != config.codebook_size:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(
                f"`{name}` must have shape (batch_size, codebook_size={config.codebook_size}), got {shape}."
            )
        if sample.is_floating_point() or sample.is_complex():
            raise ValueError(f"`{name}` must be an integer count tensor, got dtype {sample.dtype}.")
        if not checks_values(sample):
            return
        if (sample < 0).any() or (sample > config.num_tokens).any():
            raise ValueError(f"`{name}` must hold counts in [0, num_tokens={config.num_tokens}].")
        if fixed_sum and (sample.sum(-1) != config.num_tokens).any():
            raise ValueError(
                f"`{name}` must be count vectors that sum to num_tokens={config.num_tokens}, got row sums "
                f"{sample.sum(-1).tolist()}."
            )

    def _check_probs(self, probs: torch.Tensor, sample: torch.Tensor) -> None:
        expected = (sample.shape[0], self.config.codebook_size, self.config.num_tokens + 1)
        if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != expected:
            shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
            raise ValueError(
                f"`model_output` must be probabilities of shape (batch_size, codebook_size, num_tokens + 1) = "
                f"{expected}, got {shape}."
            )
        if probs.is_complex() or not probs.is_floating_point():
            raise ValueError(
                f"`model_output` must be a real floating-point tensor of probabilities, got {probs.dtype}."
            )
        if not checks_values(probs):
            return
        # One reduction, no (B, C, M+1) temporary: the minimum is NaN where any value is, and negative where any is.
        if not bool(probs.amin() >= 0):
            if torch.isnan(probs).any():
                raise ValueError("`model_output` contains NaN.")
            raise ValueError("`model_output` must be probabilities (non-negative); did you pass logits?")
        row_sums = probs.float().sum(-1)  # (B, C); inf and all-zero rows are caught here
        bad = ~((row_sums - 1).abs() <= PROBS_SUM_TOLERANCE)
        if bad.any():
            raise ValueError(
                "`model_output` must be probabilities whose rows (last dimension) sum to 1 within "
                f"{PROBS_SUM_TOLERANCE}, got row sums from {row_sums.min().item()} to {row_sums.max().item()} "
                f"({int(bad.sum())} rows off); pass `logits.softmax(-1)` rather than logits or scores."
            )

    def __len__(self):
        return self.num_inference_steps or 0
