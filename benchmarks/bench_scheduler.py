"""Times one FSDDScheduler.step and add_noise at the released size (C = 4096, M = 128), next to the baseline path
(`benchmarks/baseline.py`: the full (B, C, M) transition tensor, as the original).

python benchmarks/bench_scheduler.py [--batch_size 8] [--device cpu] [--repeats 5]
"""

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baseline import baseline_step  # noqa: E402
from tokenset_diffusers import FSDDScheduler  # noqa: E402
from tokenset_diffusers.set_ops import sample_fixed_sum_noise  # noqa: E402


def timed(function, repeats, device):
    function()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--codebook_size", type=int, default=4096)
    parser.add_argument("--num_tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch_size, codebook_size, num_tokens = args.batch_size, args.codebook_size, args.num_tokens
    generator = torch.Generator(device).manual_seed(0)
    # Probabilities shaped like a trained model's: confident about a token set (count 1 at M positions, 0 elsewhere).
    target = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
    logits = torch.randn(batch_size, codebook_size, num_tokens + 1, generator=generator, device=device)
    logits.scatter_add_(-1, target[..., None], torch.full_like(logits[..., :1], 9.0))
    logits[..., 0] += 6.0
    probs = logits.softmax(-1)
    sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"B={batch_size} C={codebook_size} M={num_tokens}")
    print(f"{'operation':<34}{'ms':>10}{'baseline ms':>14}")
    for exact_sum in (False, True):
        scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=exact_sum)
        scheduler.set_timesteps(25)
        for index in (0, 20):
            t = scheduler.timesteps[index]
            seconds = timed(partial(scheduler.step, probs, t, sample, generator=generator), args.repeats, device)
            baseline = timed(partial(baseline_step, scheduler, probs, t, sample, generator), args.repeats, device)
            print(f"{f'step t={float(t):.2f} exact_sum={exact_sum}':<34}{seconds * 1e3:>10.1f}{baseline * 1e3:>14.1f}")
        data = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
        t = torch.rand(batch_size, generator=generator, device=device).clamp(min=1e-5)
        seconds = timed(partial(scheduler.add_noise, data, sample, t, generator=generator), args.repeats, device)
        print(f"{f'add_noise exact_sum={exact_sum}':<34}{seconds * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
