"""The Fixed-Sum Discrete Diffusion (FSDD) transformer: a DiT over the count vector of a token set.

The input is a count vector `counts` of shape `(batch_size, codebook_size)` (entry `j` = how many of the image's
`num_tokens` tokens equal codebook entry `j`, so every row sums to `num_tokens`). The transformer treats the
`codebook_size` positions as a sequence, embeds each count value (0..num_tokens) plus a learned position embedding,
conditions every block on timestep and class through adaLN-Zero, and predicts, for every position, logits over the
`num_tokens + 1` possible count values of the clean data.

Precision: the embedders, the adaLN modulation layers and the output projection always compute in float32 (as the
original did under bf16 autocast with its forced-float32 modules), and the residual stream stays float32; only the
attention and MLP linear layers run in the model's dtype. `from_pretrained(..., dtype=torch.bfloat16)` keeps the
weights of those modules in float32 (`_keep_in_fp32_modules`); after `model.to(torch.bfloat16)` their weights are
bfloat16 but they are still upcast and computed in float32.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils import BaseOutput
from torch import nn

from ..utils.loading import StrictLoadingMixin
from ..utils.validation import check_number, check_positive_integers, checks_values


# Sinusoidal timestep features fed to the timestep MLP (as in DiT); not a config field because every released
# checkpoint uses 256.
TIMESTEP_FREQUENCY_DIM = 256
LAYER_NORM_EPS = 1e-6

TRANSFORMER_PRESETS: dict[str, dict[str, int]] = {
    "S": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64},
    "B": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64},
}


@dataclass
class TokenSetTransformer1DModelOutput(BaseOutput):
    """
    Output of [`TokenSetTransformer1DModel`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, codebook_size, num_tokens + 1)`):
            Unnormalised float32 scores, per codebook position, over the count values `0..num_tokens` of the clean
            count vector.
    """

    logits: torch.FloatTensor


class Float32Linear(nn.Linear):
    """`nn.Linear` that always computes in float32, whatever the dtype of its weights or an active autocast."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        device_type = input.device.type
        no_autocast = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()  # e.g. "meta": no autocast to turn off
        )
        with no_autocast:
            return F.linear(input.float(), self.weight.float(), bias)


class Float32Embedding(nn.Embedding):
    """`nn.Embedding` that always returns float32 rows, whatever the dtype of its weights."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, self.weight.float())


class TokenSetTimestepEmbedder(nn.Module):
    """Sinusoidal features of `t` in [0, 1] (cos first, 256 of them) -> Linear -> SiLU -> Linear, in float32."""

    def __init__(self, hidden_size: int, frequency_dim: int = TIMESTEP_FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = Float32Linear(frequency_dim, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = Float32Linear(hidden_size, hidden_size)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        # 1. t is used as is (no rescaling to 0..1000), frequencies exp(-ln(1e4) * i / 128), [cos, sin] order
        timestep_proj = get_timestep_embedding(
            timestep, self.frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )  # (B, 256)
        # 2. MLP
        hidden_states = self.linear_1(timestep_proj)  # (B, D)
        hidden_states = self.act(hidden_states)  # (B, D)
        hidden_states = self.linear_2(hidden_states)  # (B, D)
        return hidden_states


class TokenSetAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, computed by `scaled_dot_product_attention`."""

    def __init__(self, hidden_size: int, num_attention_heads: int, attention_head_dim: int):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        inner_dim = num_attention_heads * attention_head_dim
        # Rows of `to_qkv` are [q (all heads), k (all heads), v (all heads)], each head `attention_head_dim` wide.
        self.to_qkv = nn.Linear(hidden_size, 3 * inner_dim, bias=True)
        self.to_out = nn.Linear(inner_dim, hidden_size, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        heads, head_dim = self.num_attention_heads, self.attention_head_dim
        # 1. fused projection, split into heads
        qkv = self.to_qkv(hidden_states)  # (B, N, 3 * H * d)
        qkv = qkv.view(batch_size, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        query, key, value = qkv.unbind(0)  # 3 x (B, H, N, d)
        # 2. attention
        hidden_states = F.scaled_dot_product_attention(query, key, value)  # (B, H, N, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, seq_len, heads * head_dim)  # (B, N, H * d)
        # 3. output projection
        hidden_states = self.to_out(hidden_states)  # (B, N, D)
        return hidden_states


class TokenSetFeedForward(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)  # (B, N, D_mlp)
        hidden_states = self.act(hidden_states)  # (B, N, D_mlp)
        hidden_states = self.fc2(hidden_states)  # (B, N, D)
        return hidden_states


class TokenSetTransformerBlock(nn.Module):
    """
    DiT block with adaLN-Zero conditioning: pre-norm attention and MLP, each modulated (shift, scale) and gated by
    the conditioning vector. The residual stream and the modulation are float32; attention and MLP run in
    `compute_dtype`.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = TokenSetAttention(hidden_size, num_attention_heads, attention_head_dim)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.ff = TokenSetFeedForward(hidden_size, int(hidden_size * mlp_ratio))
        # Applied to SiLU(conditioning), which the model computes once per forward for all blocks.
        self.adaLN_modulation = Float32Linear(hidden_size, 6 * hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, conditioning: torch.Tensor, compute_dtype: torch.dtype
    ) -> torch.Tensor:
        # 1. modulation parameters, in the original's chunk order
        modulation = self.adaLN_modulation(conditioning)[:, None, :]  # (B, 1, 6D), float32
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)  # 6 x (B, 1, D)

        # 2. attention
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa  # (B, N, D)
        attn_output = self.attn(norm_hidden_states.to(compute_dtype))  # (B, N, D)
        hidden_states = hidden_states + gate_msa * attn_output  # (B, N, D), float32

        # 3. MLP
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp  # (B, N, D)
        ff_output = self.ff(norm_hidden_states.to(compute_dtype))  # (B, N, D)
        hidden_states = hidden_states + gate_mlp * ff_output  # (B, N, D), float32
        return hidden_states


class TokenSetTransformer1DModel(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """
    DiT-1D denoiser of FSDD: class- and timestep-conditioned transformer over the `codebook_size` positions of a
    count vector, predicting the clean count at every position.

    Parameters:
        codebook_size (`int`, defaults to 4096):
            Number of codebook entries C of the set tokenizer; the sequence length of the transformer.
        num_tokens (`int`, defaults to 128):
            Number of tokens M per image; counts take the `num_tokens + 1` values `0..num_tokens`, in and out.
        num_classes (`int`, defaults to 1000):
            Number of classes K. Label `num_classes` is the null class used for classifier-free guidance.
        num_layers (`int`, defaults to 12):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to 6):
            Number of attention heads.
        attention_head_dim (`int`, defaults to 64):
            Channels per head; the hidden size is `num_attention_heads * attention_head_dim`.
        mlp_ratio (`float`, defaults to 4.0):
            MLP hidden size as a multiple of the hidden size.
        class_dropout_prob (`float`, defaults to 0.1):
            Probability with which the training script replaces a label by the null class. Stored for training only:
            the model itself never drops labels.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["TokenSetTransformerBlock"]
    _repeated_blocks = ["TokenSetTransformerBlock"]
    # Matched against the components of parameter names. `from_pretrained(dtype=...)` loads these in float32,
    # and `enable_layerwise_casting` leaves them alone; their forward computes in float32 in any case.
    _keep_in_fp32_modules = [
        "count_embedder",
        "pos_embed",
        "time_embedder",
        "class_embedder",
        "adaLN_modulation",
        "adaLN_modulation_out",
        "proj_out",
    ]

    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 4096,
        num_tokens: int = 128,
        num_classes: int = 1000,
        num_layers: int = 12,
        num_attention_heads: int = 6,
        attention_head_dim: int = 64,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
    ):
        super().__init__()
        check_positive_integers(
            codebook_size=codebook_size,
            num_tokens=num_tokens,
            num_classes=num_classes,
            num_layers=num_layers,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
        )
        check_number("mlp_ratio", mlp_ratio, low=0, low_open=True)
        if int(num_attention_heads * attention_head_dim * mlp_ratio) < 1:
            raise ValueError(
                f"`mlp_ratio` must give an MLP of at least one unit (num_attention_heads * attention_head_dim * "
                f"mlp_ratio >= 1), got {mlp_ratio!r}."
            )
        check_number("class_dropout_prob", class_dropout_prob, low=0, high=1, high_open=True)

        hidden_size = num_attention_heads * attention_head_dim
        self.gradient_checkpointing = False

        # 1. input embeddings: one row per count value 0..M, a learned embedding per codebook position
        self.count_embedder = Float32Embedding(num_tokens + 1, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, codebook_size, hidden_size))

        # 2. conditioning: timestep MLP and a label table with one extra row for the null class
        self.time_embedder = TokenSetTimestepEmbedder(hidden_size)
        self.class_embedder = Float32Embedding(num_classes + 1, hidden_size)

        # 3. transformer blocks
        self.transformer_blocks = nn.ModuleList(
            [
                TokenSetTransformerBlock(hidden_size, num_attention_heads, attention_head_dim, mlp_ratio)
                for _ in range(num_layers)
            ]
        )

        # 4. output: adaLN-modulated LayerNorm and a projection to the M + 1 count values
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.adaLN_modulation_out = Float32Linear(hidden_size, 2 * hidden_size)
        self.proj_out = Float32Linear(hidden_size, num_tokens + 1)

        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT initialisation; a converted or trained checkpoint overwrites all of it."""
        # Xavier for every linear layer and zero biases: DiT's default, keeps activations O(1) through depth.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Small normal embeddings (count, position, class) and timestep MLP, as DiT does for its embedders, so the
        # conditioning starts small but not identical across inputs.
        nn.init.normal_(self.count_embedder.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.class_embedder.weight, std=0.02)
        nn.init.normal_(self.time_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embedder.linear_2.weight, std=0.02)
        # adaLN-Zero: zero modulation makes every gate 0, so each block starts as the identity and training opens
        # the residual branches gradually.
        for block in self.transformer_blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        nn.init.zeros_(self.adaLN_modulation_out.weight)
        nn.init.zeros_(self.adaLN_modulation_out.bias)
        # Zero output projection: the initial prediction is uniform over count values, with no random bias.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TokenSetTransformer1DModel":
        """
        Build a randomly initialised model of a released size.

        Args:
            name (`str`):
                One of `TRANSFORMER_PRESETS`: `"S"` (12 x 384, 6 heads) or `"B"` (12 x 768, 12 heads).
            **overrides:
                Any other config field (e.g. `codebook_size`, `num_tokens`, `num_classes`), or a preset field to
                change.
        """
        if name not in TRANSFORMER_PRESETS:
            raise ValueError(f"Unknown preset `name`={name!r}; available presets: {sorted(TRANSFORMER_PRESETS)}.")
        return cls(**{**TRANSFORMER_PRESETS[name], **overrides})

    def _check_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, class_labels: torch.Tensor
    ) -> torch.Tensor:
        """Validate the inputs of `forward` and return `timestep` as a float32 tensor of shape (B,)."""
        codebook_size, num_tokens, num_classes = (
            self.config.codebook_size,
            self.config.num_tokens,
            self.config.num_classes,
        )
        if not torch.is_tensor(sample) or sample.ndim != 2 or sample.shape[1] != codebook_size:
            shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
            raise ValueError(f"`sample` must be a tensor of shape (batch_size, {codebook_size}), got {shape}.")
        if sample.dtype.is_floating_point or sample.dtype.is_complex or sample.dtype == torch.bool:
            raise ValueError(f"`sample` must hold integer counts, got dtype {sample.dtype}.")
        batch_size = sample.shape[0]

        if isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
            timestep = torch.full((batch_size,), float(timestep), device=sample.device)
        elif torch.is_tensor(timestep) and (timestep.ndim == 0 or tuple(timestep.shape) == (batch_size,)):
            timestep = timestep.float().expand(batch_size).to(sample.device)
        else:
            shape = tuple(timestep.shape) if torch.is_tensor(timestep) else type(timestep).__name__
            raise ValueError(
                f"`timestep` must be a float, a 0-d tensor or a tensor of shape ({batch_size},), got {shape}."
            )

        if not torch.is_tensor(class_labels) or tuple(class_labels.shape) != (batch_size,):
            shape = tuple(class_labels.shape) if torch.is_tensor(class_labels) else type(class_labels).__name__
            raise ValueError(f"`class_labels` must be a tensor of shape ({batch_size},), got {shape}.")
        if class_labels.dtype.is_floating_point or class_labels.dtype.is_complex or class_labels.dtype == torch.bool:
            raise ValueError(f"`class_labels` must hold integer class ids, got dtype {class_labels.dtype}.")

        if checks_values(sample) and not torch.compiler.is_compiling():
            # One read for all value checks; none on an accelerator (`checks_values`), where shapes and dtypes are
            # all that is checked (above).
            bounds = torch.stack(
                [
                    sample.amin().float(),
                    sample.amax().float(),
                    timestep.amin(),
                    timestep.amax(),
                    class_labels.amin().float(),
                    class_labels.amax().float(),
                ]
            ).tolist()
            if bounds[0] < 0 or bounds[1] > num_tokens:
                raise ValueError(
                    f"`sample` counts must lie in [0, {num_tokens}] (num_tokens), got values in "
                    f"[{int(bounds[0])}, {int(bounds[1])}]."
                )
            if not (0.0 <= bounds[2] and bounds[3] <= 1.0):
                raise ValueError(
                    f"`timestep` must lie in [0, 1] (0 = noise, 1 = data), got values in [{bounds[2]}, {bounds[3]}]."
                )
            if bounds[4] < 0 or bounds[5] > num_classes:
                raise ValueError(
                    f"`class_labels` must lie in [0, {num_classes}] ({num_classes} = null class), got values in "
                    f"[{int(bounds[4])}, {int(bounds[5])}]."
                )
        return timestep

    def forward(
        self,
        sample: torch.LongTensor,
        timestep: torch.Tensor | float,
        class_labels: torch.LongTensor,
        return_dict: bool = True,
    ) -> TokenSetTransformer1DModelOutput | tuple[torch.Tensor]:
        """
        Args:
            sample (`torch.LongTensor` of shape `(batch_size, codebook_size)`):
                Noisy count vectors, values in `[0, num_tokens]`.
            timestep (`torch.FloatTensor` of shape `(batch_size,)`, a 0-d tensor or a `float`):
                Diffusion time in `[0, 1]`, 0 = noise, 1 = data. A scalar applies to the whole batch.
            class_labels (`torch.LongTensor` of shape `(batch_size,)`):
                Class ids in `[0, num_classes]`; `num_classes` is the null (unconditional) class.
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`TokenSetTransformer1DModelOutput`] instead of a tuple.

        Returns:
            [`TokenSetTransformer1DModelOutput`] or `tuple`: float32 `logits` of shape
            `(batch_size, codebook_size, num_tokens + 1)`.
        """
        timestep = self._check_inputs(sample, timestep, class_labels)  # (B,)
        # Attention and MLP run in the model's dtype (bf16 after `.to(torch.bfloat16)`); everything else in float32.
        compute_dtype = self.dtype

        # 1. count embedding plus position embedding
        hidden_states = self.count_embedder(sample) + self.pos_embed.float()  # (B, C, D), float32

        # 2. conditioning, once for all blocks: SiLU(t_emb + y_emb) feeds every adaLN modulation layer
        timestep_emb = self.time_embedder(timestep)  # (B, D)
        class_emb = self.class_embedder(class_labels)  # (B, D)
        conditioning = F.silu(timestep_emb + class_emb)  # (B, D)

        # 3. transformer blocks
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, conditioning, compute_dtype)
            else:
                hidden_states = block(hidden_states, conditioning, compute_dtype)  # (B, C, D)

        # 4. output layer: adaLN-modulated norm, projection to M + 1 count values
        shift, scale = self.adaLN_modulation_out(conditioning)[:, None, :].chunk(2, dim=-1)  # 2 x (B, 1, D)
        hidden_states = self.norm_out(hidden_states) * (1 + scale) + shift  # (B, C, D)
        logits = self.proj_out(hidden_states)  # (B, C, M + 1), float32

        if not return_dict:
            return (logits,)
        return TokenSetTransformer1DModelOutput(logits=logits)
