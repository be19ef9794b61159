"""MaskedARScheduler: the original's cosine schedule and guidance weights, uniform orders, the training mask."""

import math

import pytest
import torch
from helpers.tokenbridge import (
    load_json,
    single_thread,  # noqa: F401 (autouse)
)
from scipy.stats import chi2

from tokenset_diffusers import MaskedARScheduler


RUNS = load_json("tokenbridge_tiny.runs.json")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_tokens_per_step_match_the_original(name):
    run = RUNS[name]
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(run["num_iter"])
    assert scheduler.num_predicted == run["predicted_per_step"]
    assert sum(scheduler.num_predicted) == 16
    assert torch.equal(scheduler.timesteps, torch.arange(run["num_iter"]))


def test_released_schedule_counts():
    scheduler = MaskedARScheduler()
    scheduler.set_timesteps(256)
    assert scheduler.num_predicted == [1] * 256  # one token per step with num_iter = L
    scheduler.set_timesteps(64)
    assert (
        min(scheduler.num_predicted) == 1 and max(scheduler.num_predicted) == 7 and sum(scheduler.num_predicted) == 256
    )


def test_linear_guidance_weights():
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(4)
    weights = [scheduler.guidance_weight(k, 3.0, "linear") for k in range(4)]
    assert weights == pytest.approx([1.25, 1.625, 2.25, 2.875])  # the recorded run's weights
    assert [scheduler.guidance_weight(k, 3.0, "constant") for k in range(4)] == [3.0] * 4
    released = MaskedARScheduler()
    released.set_timesteps(256)
    assert released.guidance_weight(0, 3.1, "linear") == pytest.approx(1 + 2.1 / 256)
    # the last step's mask_len is clamped to 1: the weight never reaches the scale
    assert released.guidance_weight(255, 3.1, "linear") == pytest.approx(1 + 2.1 * 255 / 256)
    assert released.guidance_weight(255, 3.1) == released.guidance_weight(254, 3.1)
    with pytest.raises(ValueError, match="guidance_schedule"):
        released.guidance_weight(0, 3.1, "cosine")


def test_masks_and_positions_follow_the_order():
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(4)
    orders = scheduler.sample_orders(3, torch.Generator().manual_seed(0))
    indices = torch.zeros(3, 16, 2, dtype=torch.long)
    mask = scheduler.mask(orders, 0)
    assert mask.all()
    for step in range(4):
        assert torch.equal(mask, scheduler.mask(orders, step))
        positions = scheduler.positions_to_predict(orders, step)
        assert mask.gather(1, positions).all()  # only unknown positions are predicted
        # the last entries of the remaining order go first
        expected = orders[:, scheduler.num_unknown[step] - scheduler.num_predicted[step] : scheduler.num_unknown[step]]
        assert torch.equal(positions, expected.sort(1).values)
        tokens = torch.full((3, positions.shape[1], 2), step + 1)
        indices, mask = scheduler.step(tokens, step, indices, orders, return_dict=False)
        assert torch.equal(indices.gather(1, positions[:, :, None].expand(-1, -1, 2)), tokens)
    assert not mask.any() and (indices > 0).all()


def _order_chi_square(orders: torch.Tensor) -> float:
    """p-value of the permutation counts of orders over 4 positions (24 permutations)."""
    codes = (orders * torch.tensor([64, 16, 4, 1])).sum(1)
    _, counts = codes.unique(return_counts=True)
    counts = torch.cat([counts, torch.zeros(24 - len(counts), dtype=counts.dtype)]).double()
    expected = orders.shape[0] / 24
    return float(chi2.sf(((counts - expected) ** 2 / expected).sum().item(), 23))


def test_orders_uniform_over_permutations():
    scheduler = MaskedARScheduler(num_tokens=4)
    orders = scheduler.sample_orders(4800, torch.Generator().manual_seed(0))
    assert torch.equal(orders.sort(1).values, torch.arange(4).expand(4800, -1))
    assert _order_chi_square(orders) > 1e-4
    # the same test rejects a deliberately biased sampler
    biased = torch.argsort(torch.rand(4800, 4, generator=torch.Generator().manual_seed(0)) + 0.1 * torch.arange(4), 1)
    assert _order_chi_square(biased) < 1e-6


def test_orders_per_image_generators():
    scheduler = MaskedARScheduler(num_tokens=16)
    both = scheduler.sample_orders(2, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(both[1:], scheduler.sample_orders(1, [torch.Generator().manual_seed(2)]))


def test_training_mask_ratio_distribution():
    """One truncated-normal ratio per batch: mean 0.867 and sd 0.084 for the released (0.7, 0.25)
    (docs/tokenbridge.md#training-loss)."""
    scheduler = MaskedARScheduler()
    generator = torch.Generator().manual_seed(0)
    ratios = torch.tensor([scheduler.sample_mask_ratio(generator) for _ in range(4000)])
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    assert ratios.mean().item() == pytest.approx(0.867, abs=0.005)
    assert ratios.std().item() == pytest.approx(0.084, abs=0.005)
    mask = scheduler.sample_training_mask(3, torch.Generator().manual_seed(1))
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and 180 <= counts[0] <= 256
    ratio = scheduler.sample_mask_ratio(torch.Generator().manual_seed(1))
    assert counts[0] == math.ceil(256 * ratio)


@pytest.mark.parametrize("steps", [0, 17, 2.0])
def test_invalid_steps(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        MaskedARScheduler(num_tokens=16).set_timesteps(steps)


def test_use_before_set_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        MaskedARScheduler(num_tokens=16).guidance_weight(0, 2.0)


def test_public_scheduler_api():
    """diffusers' scheduler API: `init_noise_sigma`, `scale_model_input`, and `step(model_output, timestep, sample)`
    whose other arguments are optional keywords."""
    import inspect

    scheduler = MaskedARScheduler(num_tokens=16)
    assert scheduler.init_noise_sigma == 1.0
    sample = torch.randint(0, 64, (2, 16, 3))
    assert scheduler.scale_model_input(sample, 0) is sample
    assert scheduler.scale_model_input(sample) is sample
    parameters = inspect.signature(scheduler.step).parameters
    assert list(parameters)[:3] == ["model_output", "timestep", "sample"]
    assert all(p.default is not inspect.Parameter.empty for name, p in list(parameters.items())[3:])


def test_step_with_set_orders_is_step_with_orders():
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(4)
    orders = scheduler.sample_orders(2, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="set_orders"):
        scheduler.step(torch.zeros(2, scheduler.num_predicted[0], 2, dtype=torch.long), 0, torch.zeros(2, 16, 2))
    by_keyword = by_state = torch.zeros(2, 16, 2, dtype=torch.long)
    scheduler.set_orders(orders)
    for t in scheduler.timesteps:
        tokens = torch.randint(
            1, 64, (2, scheduler.num_predicted[int(t)], 2), generator=torch.Generator().manual_seed(int(t))
        )
        by_keyword, mask_keyword = scheduler.step(tokens, t, by_keyword, orders=orders, return_dict=False)
        output = scheduler.step(tokens, t, by_state)
        by_state = output.prev_sample
        assert torch.equal(by_state, by_keyword) and torch.equal(output.mask, mask_keyword)
    assert (by_state > 0).all()
    with pytest.raises(ValueError, match="orders"):
        scheduler.set_orders(orders[:, :8])


def test_step_takes_a_token_for_every_position():
    """A model output shaped like the sample: the positions of the step are taken from it, the rest left alone."""
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(4)
    orders = scheduler.sample_orders(2, torch.Generator().manual_seed(4))
    sample = torch.zeros(2, 16, 3, dtype=torch.long)
    everywhere = torch.arange(16)[None, :, None].expand(2, 16, 3) + 1
    prev_sample, _ = scheduler.step(everywhere, 1, sample, orders, return_dict=False)
    positions = scheduler.positions_to_predict(orders, 1)
    expected, _ = scheduler.step(positions[:, :, None].expand(-1, -1, 3) + 1, 1, sample, orders, return_dict=False)
    assert torch.equal(prev_sample, expected)
    assert int((prev_sample > 0).any(-1).sum()) == 2 * scheduler.num_predicted[1]
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(everywhere[:, :5], 1, sample, orders)


def test_scheduler_save_and_load_round_trip(tmp_path):
    scheduler = MaskedARScheduler(num_tokens=16, mask_ratio_min=0.6, mask_ratio_std=0.2)
    scheduler.save_pretrained(tmp_path)
    loaded = MaskedARScheduler.from_pretrained(tmp_path)
    assert {k: loaded.config[k] for k in ("num_tokens", "mask_ratio_min", "mask_ratio_std")} == {
        "num_tokens": 16,
        "mask_ratio_min": 0.6,
        "mask_ratio_std": 0.2,
    }
    scheduler.set_timesteps(5)
    loaded.set_timesteps(5)
    assert loaded.num_predicted == scheduler.num_predicted
