"""The learning test: the real loop (vLLM, Ray, DeepSpeed) raises the reward of a tiny policy,
under each algorithm preset's loss and sampling.

Task (configs/smoke.yaml): reward = fraction of digit characters in the completion. A random
character-level policy earns partial reward (about 0.16-0.2: 10 digits among 46 characters,
less the end token), and every group has spread, so GRPO has signal from step 1.

Each preset run takes configs/<preset>.yaml's `algorithm:` and `rollout:` sections: its loss
and the sampling it was tuned with (temperature 0.8, 8 x 8 samples of up to 32 tokens, which
only adds a fraction of a second per step). Its model, data and learner sections are the demo
task's (a 135M model, 2000 problems, lr 2e-5), about ten times slower, and stay the toy
task's. The GRPO run is shared with test_resume.py: two ZeRO-1 learner ranks and a checkpoint
after every step (conftest.py).

Margin: the per-step mean over 64 samples has a standard error of about 0.15 / 8 = 0.02 (the
population std is 0.15 at step 1 and 0.02-0.2 later), so requiring the last three steps to
average 0.25 above step 1 is over 10 standard errors (a working loop gains 0.6-0.76 in 10
steps, from 0.19 to 0.85 with grpo, 0.91 dr_grpo, 0.95 gspo, 0.79 one_step_off): noise does
not pass it, while flipping the advantage sign (reward falls), skipping the weight push (the
engine keeps sampling the initial policy) or not applying the loss (nothing changes) all fail
it. Each was broken on purpose once (16-token completions at temperature 1, where a working
loop gained 0.6): the reward went 0.160 -> 0.031 (sign flipped), 0.160 -> 0.183 (no push) and
0.160 -> 0.183 (loss times zero), and this test failed each time. DAPO's run has unsolvable
prompts (one in eight, see `unsolvable_prompts`) that earn 0: its step means also vary with
how many a step drew (a std of about 0.06 late in the run) and its gain is smaller (0.19 ->
0.70), so there the margin is about 5 standard errors.
"""

import inspect
import json

import pytest
import yaml

from tests.e2e.conftest import EVAL_EVERY, STEPS, cohort, load_preset, preset_overrides, run_in

pytestmark = pytest.mark.slow
MARGIN = 0.25
STEP_METRICS = """time/generate time/reward time/train time/push reward/std rollout/zero_std_frac
rollout/completion_len train/clip_frac train/entropy train/grad_norm train/lr""".split()


def assert_reward_rose(rows: list[dict]) -> None:
    """Steps 0 (evaluation) to STEPS were logged, and the last three steps' mean reward is
    MARGIN above step 1's."""
    assert [r["step"] for r in rows] == list(range(STEPS + 1))
    train_rows = rows[1:]
    first = train_rows[0]["reward/mean"]
    last = sum(r["reward/mean"] for r in train_rows[-3:]) / 3
    print("reward per step:", " ".join(f"{r['reward/mean']:.3f}" for r in train_rows))
    assert last >= first + MARGIN, f"reward went from {first:.3f} to {last:.3f}"


def digits_unless_multiple_of_five(completion: str, answer: str, **_) -> float:
    """The toy reward, except that a prompt whose answer is a multiple of 5 earns 0 whatever
    the completion."""
    if int(answer) % 5 == 0:
        return 0.0
    return sum(ch.isdigit() for ch in completion) / len(completion) if completion else 0.0


def unsolvable_prompts(tmp_path) -> list[str]:
    """Overrides that make 8 of the smoke task's 64 training prompts unsolvable: their groups
    have no spread (like problems too hard for the policy), so DAPO's dynamic sampling must
    drop them and generate more prompts (two steps in three draw one among their first 8)."""
    path = tmp_path / "unsolvable.py"
    path.write_text(inspect.getsource(digits_unless_multiple_of_five))
    fn = {"fn": f"{path}:{digits_unless_multiple_of_five.__name__}", "weight": 1.0}
    return [f"reward.functions={json.dumps([fn])}"]


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_each_algorithm_preset_learns(request, tiny_model, tmp_path, preset):
    """The reward rises under configs/<preset>.yaml's loss and sampling, the sampling reaches
    engine and learner alike, and what the preset turns on (KL to a reference model, dynamic
    sampling, several updates per batch) visibly happens."""
    sections = load_preset(preset)
    algorithm, rollout = sections["algorithm"], sections["rollout"]
    if preset == "grpo":
        run = request.getfixturevalue("grpo_run")  # shared with test_resume.py
    else:
        extra = unsolvable_prompts(tmp_path) if algorithm.get("dynamic_sampling") else []
        out = tmp_path / "runs"
        run = run_in(out, cohort(tiny_model, out, *preset_overrides(preset), *extra))
    rows = run.rows
    train_rows = rows[1:]

    # The preset's sampling is the run's, and the engine sampled with the temperature the
    # learner scores with: vLLM's log-probabilities of the sampled tokens equal the learner's
    # up to float32 rounding (|mismatch| <= 3e-8 per step; an engine sampling at 1.0 instead
    # of 0.8 gave 0.004-0.045). With top_p < 1 they would differ on the tail.
    used = yaml.safe_load((run.dir / "config.yaml").read_text())["rollout"]
    assert {k: used[k] for k in rollout} == rollout
    mismatch = [r["train/mismatch_kl"] for r in train_rows]
    assert max(map(abs, mismatch)) < 1e-6, f"sampler/learner mismatch per step: {mismatch}"

    assert_reward_rose(rows)

    # Samples of step t were generated by the weights after t - 1 pushes.
    updates = algorithm.get("updates_per_batch", 1)
    assert [r["train/optimizer_steps"] for r in train_rows] == [
        updates * r["step"] for r in train_rows
    ]
    for key in STEP_METRICS:
        assert key in train_rows[0], key
    evaluated = [r["step"] for r in rows if "eval/reward" in r]
    assert evaluated == list(range(0, STEPS + 1, EVAL_EVERY))
    assert (run.dir / "samples.jsonl").is_file()

    if algorithm.get("kl_coef"):
        # Step 1 trains the initial policy, which is the reference: KL 0. The policy then moves
        # away from it as the reward rises.
        kl = [r["train/kl"] for r in train_rows]
        assert kl[0] < 1e-6 and min(kl[1:]) > 1e-3 and kl[-1] > 0.1, f"KL per step: {kl}"
    if algorithm.get("dynamic_sampling"):
        # An unsolvable prompt's group is dropped and replaced by a later prompt's: steps
        # that drew one used more than prompts_per_step prompts, and no batch trained on a
        # group without spread.
        wanted = used["prompts_per_step"]
        sampled = [r["rollout/groups_sampled"] for r in train_rows]
        assert max(sampled) > wanted, f"groups sampled per step: {sampled}"
        for r in train_rows:
            assert r["rollout/groups_sampled"] == wanted or r["rollout/informative_frac"] < 1, r
            assert r["rollout/kept_uninformative"] == 0, r


def test_reward_rises_one_step_off(one_step_off_run):
    """Generation of step t+1 overlaps training on step t: every batch after the first was
    sampled by the policy one update behind the learner, and the reward still rises (the run is
    shared with test_resume.py)."""
    rows = one_step_off_run.rows
    assert_reward_rose(rows)
    train_rows = rows[1:]
    assert [r["rollout/staleness_mean"] for r in train_rows] == [0.0] + [1.0] * (STEPS - 1)
    assert all(r["train/optimizer_steps"] == r["step"] for r in train_rows)
    # The importance weights see the stale sampler: its log-probabilities drift from the
    # learner's once the policy moves (0 on the on-policy first step up to bf16/fp noise).
    assert max(r["train/mismatch_kl"] for r in train_rows[1:]) > train_rows[0]["train/mismatch_kl"]
