"""The multi-turn learning test: through the real loop (vLLM, Ray, DeepSpeed) the tiny policy
learns to use what an environment told it.

Task: every prompt is the same (`code?`); the environment answers the model's first turn with
the row's secret digit written 12 times and ends the trajectory after the second turn. The
reward is the fraction of the second turn's characters that are the secret digit. The digits
are balanced over the rows, so a policy that does not read the reply earns at most 0.1 in
expectation (always writing the same digit); the reward at step 1 is about 0.01 (1 character in
46). Requiring the last three steps to average 0.25 above step 1, and above twice that ceiling,
is only met by copying from the reply. Measured (8 x 16 trajectories at temperature 0.7, lr
5e-3, 20 steps of about 1.5 s): 0.021 0.025 0.052 0.039 0.037 0.023 0.108 0.065 0.104 0.164
0.146 0.193 0.254 0.173 0.322 0.447 0.456 0.555 0.279 0.312 (last three 0.382). With the reply's
content withheld from the context (broken on purpose: the same run, the replies rendered
empty) it went 0.016 -> 0.051 and this test failed.

Also checked on the same run: every trajectory has its two turns; the learner's loss tokens
are exactly the tokens the model generated (never the replies); samples.jsonl shows each
conversation with its roles.
"""

import json
import random

import pytest

from tests.e2e.conftest import cohort, run_in

pytestmark = pytest.mark.slow
STEPS = 20
MARGIN = 0.25
CEILING_WITHOUT_REPLY = 0.1

ENVIRONMENT = '''
class RevealCode:
    """Answers the first turn with the row's digit 12 times; ends after the second turn."""

    def reset(self, prompt, row):
        self.code, self.turn = row["answer"], 0

    def step(self, action):
        self.turn += 1
        if self.turn == 1:
            return self.code * 12
        return {"done": True}


def code_fraction(completion, answer, messages, **_):
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
    return sum(ch == answer for ch in completion) / len(completion) if completion else 0.0
'''


def write_rows(path, n: int, seed: int) -> None:
    """`n` rows `code?` with digits balanced over the rows, shuffled."""
    codes = [str(i % 10) for i in range(n)]
    random.Random(seed).shuffle(codes)
    path.write_text("".join(json.dumps({"prompt": "code?", "answer": c}) + "\n" for c in codes))


def test_the_policy_learns_to_use_the_environments_reply(tiny_model, tmp_path):
    (tmp_path / "reveal.py").write_text(ENVIRONMENT)
    write_rows(tmp_path / "train.jsonl", 80, 0)
    write_rows(tmp_path / "eval.jsonl", 20, 1)
    env = {"fn": f"{tmp_path}/reveal.py:RevealCode", "max_turns": 3, "max_total_tokens": 64}
    reward = [{"fn": f"{tmp_path}/reveal.py:code_fraction"}]
    out = tmp_path / "runs"
    run = run_in(
        out,
        cohort(
            tiny_model,
            out,
            f"trainer.steps={STEPS}",
            "trainer.eval_every=20",
            "trainer.samples_every=20",
            'data.train.generator=""',
            f"data.train.path={tmp_path}/train.jsonl",
            'data.eval.generator=""',
            f"data.eval.path={tmp_path}/eval.jsonl",
            "data.max_prompt_tokens=32",
            "rollout.group_size=16",
            "rollout.max_new_tokens=8",
            "rollout.eval_max_new_tokens=8",
            "rollout.temperature=0.7",
            f"rollout.environment={json.dumps(env)}",
            f"reward.functions={json.dumps(reward)}",
            "learner.lr=5.0e-3",
        ),
    )
    rows = run.rows
    train = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    first = train[0]["reward/mean"]
    last = sum(r["reward/mean"] for r in train[-3:]) / 3
    print("reward per step:", " ".join(f"{r['reward/mean']:.3f}" for r in train))
    assert last >= first + MARGIN, f"reward went from {first:.3f} to {last:.3f}"
    assert last > 2 * CEILING_WITHOUT_REPLY, f"{last:.3f}: no better than ignoring the reply"
    for r in train:
        assert r["multi_turn/turns_mean"] == r["multi_turn/turns_max"] == 2.0
        assert r["train/loss_tokens"] == r["rollout/tokens"]  # generated tokens only
        assert r["reward/errors"] == 0.0  # the reward function saw the conversation's roles
    # Evaluation runs the same trajectories (greedy): before training and after the last step.
    assert rows[0]["eval/completion_len"] > 0 and train[-1]["eval/completion_len"] > 0
    samples = [json.loads(x) for x in (run.dir / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        roles = [m["role"] for m in s["messages"]]
        assert roles == ["assistant", "user", "assistant"] and s["turns"] == 2
        assert s["messages"][1]["content"] == s["answer"] * 12
        assert s["completion"] == s["messages"][2]["content"]
    assert not (run.dir / "tool_failures.jsonl").exists()
