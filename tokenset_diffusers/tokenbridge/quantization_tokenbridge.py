"""TokenBridge's training-free post-training quantizer: every latent channel to `2**bits` Gaussian-quantile levels.

A latent value `x` (in scaled latent units, i.e. `vae latent * scaling_factor`) is normalised to
`u = (x - quant_min) / (quant_max - quant_min) * 2 * std_range - std_range`, clamped to `[-std_range, std_range]`, and
mapped to the index of the **nearest** level (not its quantile bin; the lower index wins an exact tie). The levels are
the means of a standard normal restricted to the bins between the Gaussian quantiles `Phi^-1(k / K)` (the outer ones
clamped to `+-std_range`). Every channel uses the same table.

The tables are persistent buffers: a converted checkpoint carries the original's float32 tables, which differ from an
exact computation by up to 5.5e-6 (the original computes them in float32); conversion copies them rather than
recomputing them. They stay float32 when the model is cast to another dtype.
"""

import math

import torch
from torch import nn

from ..utils.validation import check_integer, check_limit


class TokenBridgeQuantizer(nn.Module):
    """
    Per-channel scalar quantizer with Gaussian-quantile levels (TokenBridge, arXiv 2503.16430, section 3.1).

    Args:
        bits (`int`, defaults to 6): the number of levels is `2**bits` (64 released); at most
            `LIMITS["quantizer_bits"]` (12 by default, see `tokenset_diffusers/utils/validation.py`).
        quant_min (`float`, defaults to -5.0): the latent value mapped to `-std_range` in normalised units.
        quant_max (`float`, defaults to 5.0): the latent value mapped to `+std_range`.
        std_range (`float`, defaults to 3.0): the normalised range; the outer boundaries are clamped to it.

    Buffers (persistent, float32):
        boundaries (`(2**bits + 1,)`): the clamped Gaussian quantiles, normalised units.
        reconstruction_values (`(2**bits,)`): the level of each bin, normalised units.
    """

    def __init__(self, bits: int = 6, quant_min: float = -5.0, quant_max: float = 5.0, std_range: float = 3.0):
        super().__init__()
        bits = check_integer("bits", bits, low=1)
        # Every masked position gets a logit per level and channel: 2**16 levels would take gigabytes per image.
        check_limit("bits", bits, "quantizer_bits")
        if not (math.isfinite(quant_min) and math.isfinite(quant_max)) or not quant_min < quant_max:
            raise ValueError(f"`quant_min` must be below `quant_max`, got {quant_min!r} and {quant_max!r}.")
        if not (math.isfinite(std_range) and std_range > 0):
            raise ValueError(f"`std_range` must be a positive number, got {std_range!r}.")
        self.bits = bits
        self.num_levels = 2**bits
        self.quant_min = float(quant_min)
        self.quant_max = float(quant_max)
        self.std_range = float(std_range)
        boundaries, reconstruction_values = gaussian_quantile_tables(self.num_levels, self.std_range)
        self.register_buffer("boundaries", boundaries)
        self.register_buffer("reconstruction_values", reconstruction_values)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, quant_min={self.quant_min}, quant_max={self.quant_max}, std_range={self.std_range}"

    def _apply(self, fn, recurse=True):
        # The tables are float32 data, not weights: a cast of the model (e.g. to bfloat16) moves them but keeps their
        # precision, since rounding the levels would move indices.
        tables = {name: getattr(self, name) for name in ("boundaries", "reconstruction_values")}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            moved = getattr(self, name)
            if moved.dtype != table.dtype:
                setattr(self, name, table.to(device=moved.device))
        return self

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Latent units -> normalised units (not clamped), in float32, with the original's operation order."""
        values = values.float()
        normalized = (values - self.quant_min) / (self.quant_max - self.quant_min)
        return normalized * 2 * self.std_range - self.std_range

    def levels(self) -> torch.Tensor:
        """The `2**bits` levels in latent units (float32): what `dequantize` returns for each index."""
        span = self.quant_max - self.quant_min
        return (self.reconstruction_values + self.std_range) / (2 * self.std_range) * span + self.quant_min

    def quantize(self, values: torch.Tensor) -> torch.LongTensor:
        """
        Args:
            values (`torch.Tensor` of any shape): latent values, scaled latent units.

        Returns:
            `torch.LongTensor` of the same shape: the index of the nearest level (lower index on exact ties); values
            beyond `[quant_min, quant_max]` go to the outermost levels.
        """
        normalized = self.normalize(values).clamp(-self.std_range, self.std_range)  # (...)
        distances = (normalized.unsqueeze(-1) - self.reconstruction_values).abs()  # (..., K)
        return distances.argmin(dim=-1)  # (...)

    def dequantize(self, indices: torch.LongTensor) -> torch.FloatTensor:
        """
        Args:
            indices (`torch.LongTensor` of any shape): level indices in `[0, 2**bits)`.

        Returns:
            `torch.FloatTensor` of the same shape: the levels in latent units (float32).
        """
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"`indices` must hold integer level indices, got dtype {indices.dtype}.")
        return self.levels()[indices]

    def forward(self, values: torch.Tensor) -> tuple[torch.LongTensor, torch.FloatTensor]:
        """`(indices, dequantized values)` of `values` (latent units); see [`quantize`] and [`dequantize`]."""
        indices = self.quantize(values)
        return indices, self.dequantize(indices)


def gaussian_quantile_tables(num_levels: int, std_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The original's tables, computed as it computes them: boundaries from the float64 normal quantile of a float32
    `linspace(0, 1, K + 1)`, clamped to `+-std_range`, cast to float32; levels as the float32 conditional means
    `(phi(a) - phi(b)) / (Phi(b) - Phi(a))` with `Phi(x) = 0.5 (1 + erf(x / sqrt(2)))`. The original takes the quantile
    from scipy's `norm.ppf`; `torch.special.ndtri` agrees with it to 1.2e-7 in float64 and gives the same float32
    boundaries for 16 to 4096 levels (checked).

    Returns:
        `(boundaries, reconstruction_values)`: float32 CPU tensors of shapes `(K + 1,)` and `(K,)`.
    """
    probabilities = torch.linspace(0, 1, num_levels + 1, dtype=torch.float32, device="cpu")
    quantiles = torch.special.ndtri(probabilities.double())  # (K + 1,), -inf and +inf at the ends
    boundaries = quantiles.clamp(-std_range, std_range).to(torch.float32)  # (K + 1,)
    lower, upper = boundaries[:-1], boundaries[1:]  # (K,) each

    def density(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + torch.erf(x / math.sqrt(2)))

    mass = cdf(upper) - cdf(lower)
    mass = torch.where(mass == 0, torch.full_like(mass, 1e-10), mass)
    reconstruction_values = (density(lower) - density(upper)) / mass  # (K,)
    return boundaries, reconstruction_values


__all__ = ["TokenBridgeQuantizer", "gaussian_quantile_tables"]
