"""A learner rank's RNG states survive the trip to disk and back (`learner/checkpoint.py`)."""

import random

import numpy as np
import torch

from learner.checkpoint import restore_rng_states, rng_states


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3)


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = draws()
    draws()  # move every generator on
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = draws()
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])
