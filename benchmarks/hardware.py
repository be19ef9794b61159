"""What the benchmarks compare against: the machine's measured dense matmul rate, and the FLOPs of a forward pass.

FLOPs count a multiply-add as 2 and include the linear layers and attention (`QK^T` and `PV`), the parts that
dominate; embeddings, norms, softmax and elementwise work are left out, so the fractions reported are slight
underestimates.
"""

import platform
import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `function()` over `repeats` runs after `warmup` untimed runs, the device synchronised around
    each run."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each of `functions`, run in turn `repeats` times after one untimed round, so that a machine
    whose speed drifts favours none of them."""
    times = [[] for _ in functions]
    for round_index in range(repeats + 1):
        for function, measured in zip(functions, times):
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            if round_index:
                measured.append(time.perf_counter() - start)
    return [statistics.median(measured) for measured in times]


def describe(device: torch.device) -> str:
    """One line naming the device and software the figures come from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}"


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """Measured TFLOP/s of a square `torch.mm` of `size` (default 8192 on CUDA, 2048 on CPU) in `dtype`: the
    machine's practical dense-matmul limit for that dtype."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size**3 / seconds / 1e12


def transformer_forward_flops(config, batch_size: int) -> float:
    """FLOPs of one `TokenSetTransformer1DModel` forward on `batch_size` count vectors (`config`: its config)."""
    width = config.num_attention_heads * config.attention_head_dim
    mlp = int(width * config.mlp_ratio)
    tokens = batch_size * config.codebook_size
    per_layer_linear = 2 * tokens * (width * 3 * width + width * width + 2 * width * mlp)  # qkv, out, fc1, fc2
    per_layer_attention = 2 * 2 * batch_size * config.codebook_size**2 * width  # QK^T and PV
    output = 2 * tokens * width * (config.num_tokens + 1)
    return config.num_layers * (per_layer_linear + per_layer_attention) + output


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated memory since the last reset (CUDA), NaN elsewhere."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
