"""The DeepSpeed learner on its own: what one `train` call does to the weights, the optimizer
state and the metrics; a reset to the start (`set_algorithm` and `load_checkpoint`); and the
guard that skips a non-finite update, under every ZeRO stage, on one rank or on all.

Batches are built by hand (random completions of a tiny Llama), so no engine is needed. A
learner takes about 15 s to start, so tests share one per world size, each test starting from a
reset, or from a rebuild (`LearnerRanks.rebuild`) where it needs other learner settings.
"""

import math
import random
import re
from pathlib import Path

import pytest
import torch

from core.config import AlgorithmConfig, load_config
from core.records import Group, Prompt, Sample
from learner.flops import FlopModel
from learner.ranks import LearnerRanks
from tests.conftest import scored

pytestmark = pytest.mark.integration


def batch(prompts: int = 4, group: int = 4, seed: int = 0):
    """Random groups with 0/1 rewards: (groups, rewards [P][G], valid [P][G])."""
    rng = random.Random(seed)
    groups, rewards = [], []
    for p in range(prompts):
        prompt = Prompt(f"p{p}", "q", [3] + [rng.randrange(6, 52) for _ in range(5)] + [5, 4])
        samples = []
        for _ in range(group):
            ids = [rng.randrange(6, 52) for _ in range(rng.randint(1, 6))]
            samples.append(Sample(ids, "", [-3.9] * len(ids), "stop", 0))
        groups.append(Group(prompt, samples))
        rewards.append([float(rng.random() < 0.5) for _ in samples])
    return groups, rewards, [[True] * group for _ in range(prompts)]


def params(learner: LearnerRanks) -> dict[str, torch.Tensor]:
    import ray

    refs = learner.export_weights("float32")
    return {k: v.clone() for ref in refs for k, v in ray.get(ref).items()}


def config(tiny_model: str, *overrides: str):
    """The smoke config on the tiny model, 16 samples a batch (4 prompts x 4)."""
    base = [f"model.path={tiny_model}", "rollout.prompts_per_step=4", "rollout.group_size=4"]
    return load_config("configs/smoke.yaml", [*base, *overrides])


def reset(learner: LearnerRanks, start: str, algorithm: AlgorithmConfig) -> None:
    """Back to the checkpoint `start` (weights, optimizer, schedule, RNG), with `algorithm`."""
    learner.set_algorithm(algorithm)
    learner.load_checkpoint(start)


def training_state(learner: LearnerRanks, path: Path) -> dict[str, object]:
    """Every value the learner's checkpoint holds (DeepSpeed's model, optimizer and schedule
    files of all ranks, ZeRO partitions included), flat by path, e.g.
    `zero_pp_rank_1_mp_rank_00_optim_states.pt/.../state/0/exp_avg`."""
    learner.save_checkpoint(str(path))
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.Tensor):
            walk(prefix, vars(value))  # e.g. DeepSpeed's loss scaler: compared by its fields
        else:
            flat[prefix] = value

    for file in sorted((path / "deepspeed").glob("*.pt")):
        walk(file.name, torch.load(file, map_location="cpu", weights_only=False))
    return flat


def changed(before: dict[str, object], after: dict[str, object]) -> set[str]:
    """The paths whose values differ (bitwise for tensors)."""

    def same(a, b) -> bool:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return type(a) is type(b) and a.shape == b.shape and torch.equal(a, b)
        return a == b

    return {k for k in before.keys() | after.keys() if not same(before.get(k), after.get(k))}


def name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def summary(paths: set[str]) -> list[str]:
    """`paths` with parameter indices and weight names as `*`, for a short failure message."""
    return sorted({re.sub(r"/module/.*", "/module/*", re.sub(r"/\d+/", "/*/", p)) for p in paths})


# ---------------------------------------------------------------------------------------------
# One rank, shared by the tests below: each starts from the learner's initial checkpoint.


def one_rank_config(tiny_model: str):
    return config(
        tiny_model, "learner.micro_batch_size=4", "learner.lr=1e-2", "learner.warmup_steps=3"
    )


@pytest.fixture(scope="module")
def one_rank(ray_local, tiny_model, tmp_path_factory):
    """A 1-rank AdamW learner warming up over 3 steps, its initial checkpoint, and what its
    first update did on a fresh start: (learner, start, (weights before, metrics, after))."""
    learner = LearnerRanks(one_rank_config(tiny_model), tiny_model)
    start = tmp_path_factory.mktemp("start")
    learner.save_checkpoint(str(start))
    before = params(learner)
    metrics = learner.train(scored(*batch(seed=0)))
    yield learner, str(start), (before, metrics, params(learner))
    learner.shutdown()


def test_step_changes_every_parameter_and_reports_metrics(one_rank):
    _, _, (before, metrics, after) = one_rank
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters a step did not change: {unchanged}"
    assert metrics["train/optimizer_steps"] == 1
    # lr x min(1, (steps + 1) / warmup_steps): the next step's rate, 2/3 of the way up
    assert metrics["train/grad_norm"] > 0 and metrics["train/lr"] == pytest.approx(1e-2 * 2 / 3)
    assert metrics["train/clip_frac"] == 0.0  # one update: ratio is exactly 1
    assert "train/kl" not in metrics  # kl_coef 0: no reference model
    # Model FLOPs over the real tokens: forward and backward (3 forwards) of each sample, whose
    # prompt and completion lengths the batch gives (the tiny model's sizes: tests/unit/
    # test_flops.py), whatever the padding of the 4 micro-batches.
    groups, _, _ = batch(seed=0)
    lengths = [(len(g.prompt.token_ids), len(s.completion_token_ids)) for g in groups
               for s in g.samples]  # fmt: skip
    assert metrics["train/real_tokens"] == sum(p + c for p, c in lengths)
    tokens, scored_tokens = (
        torch.tensor([p + c for p, c in lengths]),
        torch.tensor([c for _, c in lengths]),
    )
    want = 3 * FlopModel(327_680, 6_656, 2, 128).forward(tokens, scored_tokens)
    assert metrics["train/model_flops"] == pytest.approx(want, rel=1e-12)


def test_a_reset_learner_repeats_its_first_update_bitwise(one_rank, tiny_model):
    """Weights, AdamW's moments and step count, the warm-up's position, the step counter and
    the algorithm (a reference model loaded, then dropped) all go back to the start."""
    learner, start, (_, first, first_after) = one_rank
    kl = config(tiny_model, "algorithm.kl_coef=0.1").algorithm
    reset(learner, start, kl)
    for seed in (1, 2):  # moments, step count and warm-up move on; the KL term needs the ref
        assert "train/kl" in learner.train(scored(*batch(seed=seed)))
    reset(learner, start, config(tiny_model).algorithm)
    again = learner.train(scored(*batch(seed=0)))
    timeless = {k: v for k, v in first.items() if not k.startswith("time/")}
    assert {k: v for k, v in again.items() if not k.startswith("time/")} == timeless
    moved = [k for k, v in params(learner).items() if not torch.equal(v, first_after[k])]
    assert not moved, f"after a reset, the first update moved these weights otherwise: {moved}"


def test_kl_as_reward_penalty_and_sampler_correction(one_rank, tiny_model):
    learner, start, _ = one_rank
    algorithm = config(
        tiny_model,
        "algorithm.kl_coef=0.1",
        "algorithm.kl_in=reward",
        "algorithm.kl_estimator=k1",
        "algorithm.sampler_correction=token_truncate",
        "algorithm.correction_upper=2",
    ).algorithm
    reset(learner, start, algorithm)
    first = learner.train(scored(*batch(seed=0)))
    # Before any step the policy is the reference: no penalty, and no KL term in the loss.
    assert first["train/kl_penalty"] == pytest.approx(0.0, abs=1e-6)
    assert "train/kl" not in first
    # The batch's sampler log-probs are a flat -3.9, far below the learner's on its favoured
    # tokens, so some weights pi_learner / pi_sampler exceed 2 and are truncated.
    assert 0 < first["train/tis/truncated_frac"] < 1
    assert first["train/tis/weight_mean"] <= 2.0
    second = learner.train(scored(*batch(seed=1)))
    # the policy moved away from the reference (k1 in the reward: -9e-4 here, either sign)
    assert abs(second["train/kl_penalty"]) > 1e-4


def test_set_algorithm_refuses_a_different_number_of_updates(one_rank, tiny_model):
    learner, _, _ = one_rank
    two = config(tiny_model, "learner.micro_batch_size=4", "algorithm.updates_per_batch=2")
    with pytest.raises(ValueError, match="updates_per_batch cannot change from 1 to 2"):
        learner.set_algorithm(two.algorithm)


def test_rebuild_refuses_another_world_size(one_rank, tiny_model):
    learner, _, _ = one_rank
    with pytest.raises(ValueError, match="world_size cannot change from 1 to 2"):
        learner.rebuild(config(tiny_model, "learner.world_size=2", "learner.micro_batch_size=4"))


def test_a_batch_of_another_size_is_refused_not_silently_skipped(one_rank):
    """DeepSpeed steps every `gradient_accumulation_steps` micro-batches, fixed at set-up: a
    smaller batch would end no update (no optimizer step, no error) and is refused."""
    learner, _, _ = one_rank
    with pytest.raises(ValueError, match="got 8 samples, 2 micro-batches .* set up for 4"):
        learner.train(scored(*batch(prompts=2)))


def test_a_rank_imports_deepspeed_without_mlflow(one_rank):
    """DeepSpeed's autotuner imports mlflow, when installed, at DeepSpeed's import (about 3 s
    of a rank's start): a rank imports DeepSpeed without it, and can still import mlflow."""
    import ray

    pytest.importorskip("mlflow")
    learner, _, _ = one_rank

    def modules(_actor) -> tuple[bool, bool, bool]:
        import importlib
        import sys

        loaded = "deepspeed" in sys.modules, "mlflow" in sys.modules
        return *loaded, importlib.import_module("mlflow").__name__ == "mlflow"

    rank = learner.ranks[0]
    assert ray.get(rank.__ray_call__.remote(modules)) == (True, False, True)


def test_several_updates_and_kl_to_reference_then_a_rebuild_is_a_fresh_learner(
    one_rank, tiny_model
):
    """On the shared rank rebuilt with two updates per batch and a KL term (what
    `set_algorithm` refuses to change); then rebuilt with the fixture's settings, it repeats
    the fresh learner's first update bitwise."""
    learner, _, (_, fresh, fresh_after) = one_rank
    overrides = [
        "learner.micro_batch_size=4",
        "learner.lr=1e-2",
        "algorithm.updates_per_batch=2",
        "algorithm.kl_coef=0.1",
    ]
    learner.rebuild(config(tiny_model, *overrides))
    first = learner.train(scored(*batch(seed=0)))
    # Two mini-batches: two optimizer steps. The second runs on moved weights, so the ratio
    # departs from 1 and the policy departs from the reference.
    assert first["train/optimizer_steps"] == 2
    assert first["train/kl"] > 0
    # old log-probs were taken before the first update (1.039 here)
    assert abs(first["train/ratio_mean"] - 1.0) > 1e-4
    second = learner.train(scored(*batch(seed=0)))  # the same batch again, from further away
    assert second["train/optimizer_steps"] == 4
    assert second["train/kl"] > first["train/kl"]

    learner.rebuild(one_rank_config(tiny_model))
    again = learner.train(scored(*batch(seed=0)))
    timeless = {k: v for k, v in fresh.items() if not k.startswith("time/")}
    assert {k: v for k, v in again.items() if not k.startswith("time/")} == timeless
    moved = [k for k, v in params(learner).items() if not torch.equal(v, fresh_after[k])]
    assert not moved, f"the rebuilt learner's first update moved these weights otherwise: {moved}"


# ---------------------------------------------------------------------------------------------
# The non-finite guard: two ranks per ZeRO stage, one learner per stage shared by the faults.

FAULTS = {
    "NaN loss on every rank": "nan_loss@2",
    "finite loss, infinite gradient on every rank": "inf_grad@3",
    "NaN loss on rank 1 only": "nan_loss@rank1:4",
    "finite loss, infinite gradient on rank 1 only": "inf_grad@rank1:5",
}
STEP_BOOKKEEPING = {"global_steps", "global_samples", "skipped_steps", "overflow"}
"""What a skipped update may change in the checkpoint: DeepSpeed's counts of its step calls
(which still run, to keep its accumulation bookkeeping) and of its own overflow skips."""


def guarded_config(tiny_model: str, zero_stage: int):
    return config(
        tiny_model,
        "learner.world_size=2",
        f"learner.zero_stage={zero_stage}",
        "learner.micro_batch_size=4",
        "learner.lr=1e-2",
        "learner.warmup_steps=10",
        f"trainer.fault_injection={','.join(FAULTS.values())}",
    )


@pytest.fixture(scope="module")
def two_ranks(ray_local, tiny_model):
    """Two learner ranks, rebuilt for each ZeRO stage."""
    learner = LearnerRanks(guarded_config(tiny_model, 0), tiny_model)
    yield learner
    learner.shutdown()


@pytest.fixture(scope="module", params=[0, 1, 2, 3], ids=lambda stage: f"ZeRO-{stage}")
def guarded(request, two_ranks, tiny_model):
    """Two AdamW ranks at one ZeRO stage, 2 micro-batches per rank and update, warming up over
    10 steps, with every fault of FAULTS configured; one normal update taken, so that Adam has
    moments and the warm-up has moved."""
    learner = two_ranks
    learner.rebuild(guarded_config(tiny_model, request.param))
    first = learner.train(scored(*batch(seed=0)), 1)
    assert first["train/optimizer_steps"] == 1 and first["train/skipped_updates"] == 0
    return learner


@pytest.mark.parametrize("fault", FAULTS)
def test_nonfinite_update_is_skipped_on_every_rank_and_changes_nothing(guarded, fault, tmp_path):
    learner, step = guarded, int(re.split("[@:]", FAULTS[fault])[-1])
    before, weights = training_state(learner, tmp_path / "before"), params(learner)
    assert {"exp_avg", "exp_avg_sq", "step", "last_epoch"} <= {name(k) for k in before}

    # LearnerRanks.train stops the run (RunStopped) if the ranks did not skip alike.
    skipped = learner.train(scored(*batch(seed=step)), step)
    assert skipped["train/skipped_updates"] == 1, fault
    assert math.isfinite(skipped["train/loss"]) == ("finite loss" in fault)
    after = training_state(learner, tmp_path / "after")
    moved = {k for k in changed(before, after) if name(k) not in STEP_BOOKKEEPING}
    assert not moved, f"{fault}: a skipped update changed {summary(moved)}"
    assert all(torch.equal(weights[k], v) for k, v in params(learner).items()), fault

    # The next update is a normal one: it counts, and moves the moments and the warm-up.
    normal = learner.train(scored(*batch(seed=step)), 0)
    assert normal["train/skipped_updates"] == 0, fault
    assert normal["train/optimizer_steps"] == skipped["train/optimizer_steps"] + 1, fault
    assert all(torch.isfinite(v).all() for v in params(learner).values()), fault
    moved = {name(k) for k in changed(after, training_state(learner, tmp_path / "next"))}
    assert {"exp_avg", "exp_avg_sq", "step", "last_epoch"} <= moved, fault
