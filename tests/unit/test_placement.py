"""The resource check that runs before any actor starts (fake node lists, no Ray)."""

import pytest

from cluster.placement import PlacementError, check_resources, contention_note, demands
from core.config import load_config


def cfg(*overrides):
    return load_config("configs/smoke.yaml", list(overrides))


def test_smoke_fits_one_small_node():
    check_resources(cfg(), nodes=[{"CPU": 4.0}])


def test_short_cpus_are_named_with_each_role():
    # 1 engine x 0.5 + 1 rank x 0.5 + 1 reward actor x 0.25 = 1.25 CPUs
    with pytest.raises(PlacementError) as e:
        check_resources(cfg(), nodes=[{"CPU": 1.0}])
    msg = str(e.value)
    assert "CPU: needs 1.25 (learner ranks 0.5, rollout engines 0.5, reward actors 0.25)" in msg
    assert "the cluster has 1" in msg


def test_gpus_and_tensor_parallel_engines_must_fit_one_node():
    c = cfg("cluster.use_gpu=true", "cluster.rollout_engines=2", "cluster.rollout_tp=2",
            "learner.world_size=2", "learner.micro_batch_size=8")  # fmt: skip
    assert sum(b.get("GPU", 0) for _, b in demands(c)) == 6  # 2 engines x 2 + 2 ranks
    eight = [{"CPU": 16.0, "GPU": 8.0}]
    check_resources(c, nodes=eight)
    with pytest.raises(PlacementError, match="GPU: needs 6"):
        check_resources(c, nodes=[{"CPU": 16.0, "GPU": 4.0}])
    # enough GPUs in total, but no node has the 2 an engine needs together
    with pytest.raises(PlacementError, match="on a single node"):
        check_resources(c, nodes=[{"CPU": 4.0, "GPU": 1.0} for _ in range(6)])


def test_role_labels_must_exist_on_some_node():
    c = cfg("cluster.rollout_resources={rollout_node: 1}")
    with pytest.raises(PlacementError, match="rollout_node: needs 1"):
        check_resources(c, nodes=[{"CPU": 8.0}])
    check_resources(c, nodes=[{"CPU": 2.0}, {"CPU": 2.0, "rollout_node": 1.0}])


def test_colocated_engines_share_the_learner_bundles():
    c = cfg("cluster.use_gpu=true", "cluster.colocate=true")
    assert [role for role, _ in demands(c)] == ["learner ranks", "reward actors"]
    check_resources(c, nodes=[{"CPU": 4.0, "GPU": 1.0}])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["cluster.weight_transport=nccl"], "cluster.weight_transport"),  # needs GPUs
        (["cluster.colocate=true"], "cluster.colocate"),  # needs GPUs
        (["cluster.rollout_tp=2"], "cluster.rollout_tp"),  # needs GPUs
        (["cluster.use_gpu=true", "cluster.offload_learner=true"], "cluster.offload_learner"),
        (["cluster.use_gpu=true", "cluster.weight_transport=ipc"], "cluster.weight_transport"),
    ],
)
def test_gpu_only_settings_are_refused_with_the_key(overrides, key):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        cfg(*overrides)


def test_one_step_off_on_shared_cpu_cores_gets_a_note_naming_the_settings():
    off = ["trainer.mode=one_step_off", "algorithm.sampler_correction=token_truncate"]
    note = contention_note(cfg(*off))
    assert note and "rollout.omp_threads_bind" in note and "learner.cpu_cores" in note
    # Half pinned still overlaps: the unpinned phase floats onto the other's cores.
    assert contention_note(cfg(*off, "learner.cpu_cores=1"))
    assert contention_note(cfg(*off, "rollout.omp_threads_bind=0"))
    assert contention_note(cfg(*off, "learner.cpu_cores=1", "rollout.omp_threads_bind=0")) is None
    assert contention_note(cfg()) is None  # sync: the phases take turns
