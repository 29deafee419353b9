"""Example user reward functions (see docs/rewards.md), ready to name in a config:

reward:
  functions:
    - {name: math_answer, weight: 1.0}
    - {fn: configs/rewards/examples.py:concise_and_tagged, weight: 0.2, kwargs: {limit: 400}}
    - {fn: configs/rewards/examples.py:group_diversity, weight: 0.1, batched: true}
"""


def concise_and_tagged(completion: str, *, prompt, answer, row, num_tokens, limit=400, **_):
    """Two named components, summed into the score and logged as
    `reward/concise_and_tagged/tagged/mean` and `.../concise/mean`: 1 if the completion has an
    `<answer>` tag, and 1 if it is at most `limit` tokens long (`num_tokens` is passed because
    the signature names it)."""
    return {
        "tagged": float("<answer>" in completion and "</answer>" in completion),
        "concise": float(num_tokens <= limit),
    }


def group_diversity(completions: list[str], *, prompts, answers, rows, **_):
    """Batched (one call per group): the fraction of the group's completions that are unique,
    the same for every completion of the group. An empty completion fails (an Exception in
    the list marks that one sample failed)."""
    unique = len(set(completions)) / len(completions)
    return [unique if c else ValueError("empty completion") for c in completions]
