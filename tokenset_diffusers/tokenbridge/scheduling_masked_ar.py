"""The masked autoregressive (MAR) sampling schedule of TokenBridge as a diffusers scheduler.

Generation starts with every one of the `num_tokens` positions masked and a random order per image. At step k of N,
`mask_len = floor(L cos(pi/2 (k + 1) / N))`, clamped to `[1, n_unknown - 1]`, positions stay masked: the first
`mask_len` of the order; the rest of the still-unknown positions (the **last** entries of the remaining order) are
predicted at this step; the last step predicts every position left. Training masks a truncated-normal fraction of
the positions of a random order ([`MaskedARScheduler.sample_training_mask`]).
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..utils.sampling import GeneratorType, uniform_tensor
from ..utils.validation import check_choice, check_integer, check_limit, check_number


GUIDANCE_SCHEDULES = ("linear", "constant")


@dataclass
class MaskedARSchedulerOutput(BaseOutput):
    """Output of [`MaskedARScheduler.step`].

    Args:
        prev_sample (`torch.LongTensor` of shape `(batch_size, num_tokens, latent_channels)`):
            the token indices with this step's predictions written in.
        mask (`torch.BoolTensor` of shape `(batch_size, num_tokens)`): the mask for the next step (True = unknown).
    """

    prev_sample: torch.LongTensor
    mask: torch.BoolTensor


class MaskedARScheduler(SchedulerMixin, ConfigMixin):
    """
    Cosine masked-autoregressive schedule (MAR / TokenBridge) over `num_tokens` positions.

    Args:
        num_tokens (`int`, defaults to 256): L, the number of token positions.
        mask_ratio_min (`float`, defaults to 0.7): training masks a fraction drawn from a normal with mean 1 and
            standard deviation `mask_ratio_std`, truncated to `[mask_ratio_min, 1]`.
        mask_ratio_std (`float`, defaults to 0.25): see `mask_ratio_min`.

    After [`set_timesteps`], `timesteps` is `0..N-1`, `mask_lengths[k]` the number of positions still masked after
    step k (as the original computes it, 1 at the last step), `num_unknown[k]` the number masked at its start,
    `num_predicted[k]` the number of positions each image predicts at step k, and `num_generated` the number of
    positions the schedule generates (`num_tokens`, or fewer for editing: the others are known from the start and
    come last in every order, see [`sample_orders`]).

    The public scheduler API of diffusers: `init_noise_sigma` (1.0: the sample starts as placeholder indices, nothing
    is scaled), [`scale_model_input`] (the identity), and [`step`]`(model_output, timestep, sample)` with the
    generation orders passed as `orders=` or set once per batch with [`set_orders`].
    """

    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_tokens: int = 256, mask_ratio_min: float = 0.7, mask_ratio_std: float = 0.25):
        check_integer("num_tokens", num_tokens, low=2)
        check_number("mask_ratio_min", mask_ratio_min, low=0, high=1, low_open=True)
        check_number("mask_ratio_std", mask_ratio_std, low=0, low_open=True)
        self.num_inference_steps = None
        self.timesteps = None
        self.mask_lengths: list[int] = []
        self.num_unknown: list[int] = []
        self.num_predicted: list[int] = []
        self.orders = None
        self.num_generated: int | None = None

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, num_generated: int | None = None
    ) -> None:
        """
        Compute the schedule of `num_inference_steps` steps (host-side integers, so that no step waits on a device).

        Args:
            num_inference_steps (`int`): the number of steps N.
            device (`str` or `torch.device`, *optional*): where `timesteps` goes.
            num_generated (`int`, *optional*): the number of positions to generate, `num_tokens` by default. Editing
                (inpainting, variations) generates fewer: the cosine schedule then runs over those alone, as if the
                image had `num_generated` positions, and the other positions are known from the start. 0 gives an
                empty schedule (then `num_inference_steps` must be 0).

        Raises:
            `ValueError` unless `0 <= num_generated <= num_tokens` and `1 <= num_inference_steps <= num_generated`
            (`num_inference_steps == 0` when `num_generated == 0`), and `num_inference_steps <=
            LIMITS["inference_steps"]` (10,000 by default, see `tokenset_diffusers/utils/validation.py`).
        """
        num_tokens = self.config.num_tokens
        if num_generated is None:
            num_generated = num_tokens
        num_generated = check_integer("num_generated", num_generated, low=0, high=num_tokens, high_name="num_tokens")
        # More steps than tokens would predict nothing at some steps.
        num_inference_steps = check_integer(
            "num_inference_steps",
            num_inference_steps,
            low=min(1, num_generated),
            high=num_generated,
            high_name="num_tokens" if num_generated == num_tokens else "num_generated",
        )
        check_limit("num_inference_steps", num_inference_steps, "inference_steps")
        mask_lengths, num_unknown = [], []
        unknown = num_generated
        for step in range(num_inference_steps):
            mask_len = math.floor(num_generated * math.cos(math.pi / 2.0 * (step + 1) / num_inference_steps))
            mask_len = max(1, min(unknown - 1, mask_len))
            num_unknown.append(unknown)
            mask_lengths.append(mask_len)
            unknown = mask_len
        self.num_inference_steps = num_inference_steps
        self.num_generated = num_generated
        self.mask_lengths = mask_lengths
        self.num_unknown = num_unknown
        # The last step predicts every position still unknown.
        self.num_predicted = [
            u - (m if k < num_inference_steps - 1 else 0) for k, (u, m) in enumerate(zip(num_unknown, mask_lengths))
        ]
        self.timesteps = torch.arange(num_inference_steps, device=device)

    def guidance_weight(
        self, step_index: int, guidance_scale: float, guidance_schedule: Literal["linear", "constant"] = "linear"
    ) -> float:
        """
        The classifier-free guidance weight of step `step_index`: `1 + (s - 1) (L - mask_len) / L` for `"linear"`
        (with the clamped `mask_len`, so the last step uses `1 + (s - 1)(L - 1) / L`, never `s`), `s` for
        `"constant"`.
        """
        check_choice("guidance_schedule", guidance_schedule, GUIDANCE_SCHEDULES)
        self._check_step(step_index)
        if guidance_schedule == "constant":
            return float(guidance_scale)
        num_tokens = self.config.num_tokens
        return 1.0 + (guidance_scale - 1.0) * (num_tokens - self.mask_lengths[step_index]) / num_tokens

    def sample_orders(
        self,
        batch_size: int,
        generator: GeneratorType = None,
        device: str | torch.device | None = None,
        known: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        """
        One uniformly random order (permutation of the positions) per image, `(batch_size, num_tokens)`; with a list
        of generators, image b's order comes from `generator[b]` alone.

        Args:
            known (`torch.BoolTensor` of shape `(batch_size, num_tokens)`, *optional*): positions known from the start
                (editing): they come last in every order, the others first in a uniformly random order. The same
                numbers are drawn either way, so with no position known the orders are those of `known=None`.
        """
        uniforms = uniform_tensor((batch_size, self.config.num_tokens), generator, device=device)
        if known is not None:
            if tuple(known.shape) != tuple(uniforms.shape):
                raise ValueError(f"`known` must have shape {tuple(uniforms.shape)}, got {tuple(known.shape)}.")
            uniforms = uniforms.masked_fill(known.to(uniforms.device, torch.bool), 2.0)  # uniforms are < 1
        return torch.argsort(uniforms, dim=1)

    def mask(self, orders: torch.LongTensor, step_index: int) -> torch.BoolTensor:
        """The mask at the start of step `step_index` (True at the first `num_unknown[k]` positions of the order)."""
        self._check_step(step_index)
        return _mask_by_order(orders, self.num_unknown[step_index])

    def positions_to_predict(self, orders: torch.LongTensor, step_index: int) -> torch.LongTensor:
        """
        The positions each image predicts at step `step_index`, ascending: `(batch_size, num_predicted[k])`. They are
        the order's entries `mask_len .. num_unknown - 1` (all unknown ones at the last step).
        """
        self._check_step(step_index)
        start = self.num_unknown[step_index] - self.num_predicted[step_index]
        return orders[:, start : self.num_unknown[step_index]].sort(dim=1).values

    def set_orders(self, orders: torch.LongTensor | None) -> None:
        """
        Sets the generation orders that [`step`] uses when it is not given `orders` (e.g. those of
        [`sample_orders`]); `None` forgets them.

        Args:
            orders (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*): one permutation of the
                positions per image.
        """
        num_tokens = self.config.num_tokens
        if orders is not None and not (torch.is_tensor(orders) and orders.ndim == 2 and orders.shape[1] == num_tokens):
            shape = tuple(orders.shape) if torch.is_tensor(orders) else type(orders).__name__
            raise ValueError(f"`orders` must be a tensor of shape (batch_size, {num_tokens}), got {shape}.")
        self.orders = orders

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The sample unchanged: masked-AR sampling scales nothing (diffusers' scheduler API).

        Args:
            sample (`torch.Tensor`): the current sample.
            timestep (`int` or 0-d tensor, *optional*): unused.

        Returns:
            `torch.Tensor`: `sample`.
        """
        return sample

    def step(
        self,
        model_output: torch.LongTensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        orders: torch.LongTensor | None = None,
        return_dict: bool = True,
    ) -> MaskedARSchedulerOutput | tuple:
        """
        Write this step's predicted tokens into the sample.

        Args:
            model_output (`torch.LongTensor`): the tokens drawn for [`positions_to_predict`], VAE channel order:
                `(batch_size, num_predicted[k], latent_channels)` (in that order), or `(batch_size, num_tokens,
                latent_channels)` like `sample` (a token for every position; those of the positions step k predicts
                are taken).
            timestep (`int` or 0-d tensor): the step index k (an entry of `timesteps`).
            sample (`torch.LongTensor` of shape `(batch_size, num_tokens, latent_channels)`): the current indices.
            orders (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*): the generation orders;
                defaults to those set with [`set_orders`].
            return_dict (`bool`, defaults to `True`).

        Returns:
            [`MaskedARSchedulerOutput`] or `(prev_sample, mask)`.
        """
        if orders is None:
            orders = self.orders
        if orders is None:
            raise ValueError(
                "`orders` is not given and none are set: pass `orders=` (one permutation of the positions per image, "
                "e.g. from `sample_orders`) or call `set_orders(orders)` before `step`."
            )
        step_index = int(timestep)
        positions = self.positions_to_predict(orders, step_index)  # (B, n)
        if model_output.ndim == 3 and tuple(model_output.shape[:2]) == (positions.shape[0], self.config.num_tokens):
            if positions.shape[1] != self.config.num_tokens:  # a token for every position: keep this step's
                model_output = model_output.gather(1, positions[:, :, None].expand(-1, -1, model_output.shape[-1]))
        if tuple(model_output.shape[:2]) != tuple(positions.shape):
            raise ValueError(
                f"`model_output` must have shape ({positions.shape[0]}, {positions.shape[1]}, channels) or "
                f"({positions.shape[0]}, {self.config.num_tokens}, channels) at step {step_index}, got "
                f"{tuple(model_output.shape)}."
            )
        index = positions[:, :, None].expand(-1, -1, sample.shape[-1])
        prev_sample = sample.scatter(1, index, model_output.to(sample.dtype))  # (B, L, C)
        is_last = step_index == self.num_inference_steps - 1
        next_mask = _mask_by_order(orders, 0 if is_last else self.mask_lengths[step_index])  # (B, L)
        if not return_dict:
            return prev_sample, next_mask
        return MaskedARSchedulerOutput(prev_sample=prev_sample, mask=next_mask)

    def sample_training_mask(
        self, batch_size: int, generator: GeneratorType = None, device: str | torch.device | None = None
    ) -> torch.BoolTensor:
        """
        The training mask as the original draws it: one ratio per batch from a normal(1, `mask_ratio_std`) truncated
        to `[mask_ratio_min, 1]` (drawn from the first generator of a list), `ceil(L * ratio)` masked positions, the
        first ones of a random order per image.

        Returns:
            `torch.BoolTensor` of shape `(batch_size, num_tokens)`, True = masked.
        """
        ratio = self.sample_mask_ratio(generator[0] if isinstance(generator, (list, tuple)) else generator)
        num_masked = math.ceil(self.config.num_tokens * ratio)
        orders = self.sample_orders(batch_size, generator, device=device)
        return _mask_by_order(orders, num_masked)

    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """One draw of the truncated-normal mask ratio (inverse CDF; a host-side number)."""
        low = (self.config.mask_ratio_min - 1.0) / self.config.mask_ratio_std
        normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        cdf_low = normal.cdf(torch.tensor(low, dtype=torch.float64))
        device = generator.device if generator is not None else "cpu"  # a CUDA generator draws on its device
        uniform = torch.rand((), generator=generator, dtype=torch.float64, device=device).cpu()
        standard = normal.icdf(cdf_low + uniform * (0.5 - cdf_low))  # upper end 0 standard deviations: ratio 1
        return float(min(1.0, max(self.config.mask_ratio_min, 1.0 + self.config.mask_ratio_std * standard.item())))

    def _check_step(self, step_index: int) -> None:
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps(num_inference_steps)` before using the schedule.")
        if not 0 <= step_index < self.num_inference_steps:
            raise ValueError(f"`step_index` must be in [0, {self.num_inference_steps}), got {step_index}.")

    def __len__(self) -> int:
        return self.config.num_tokens


def _mask_by_order(orders: torch.LongTensor, num_masked: int) -> torch.BoolTensor:
    """True at the first `num_masked` positions of each order: `(batch_size, num_tokens)`."""
    ranks = torch.argsort(orders, dim=1)  # rank of every position in its order
    return ranks < num_masked


__all__ = ["GUIDANCE_SCHEDULES", "MaskedARScheduler", "MaskedARSchedulerOutput"]
