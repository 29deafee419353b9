"""Where the actors go: check the cluster can hold the config, reserve placement groups, and
hand each pool the Ray options that put its actors in them.

Layout: one placement group per rollout engine (its `rollout_tp` GPU bundles packed on one
node, STRICT_PACK), one placement group for all learner ranks (PACK: as few nodes as
possible, so the gradient all-reduce stays local when it can), and reward actors as plain
actors anywhere with CPUs. Per-role extra resources (`cluster.*_resources`) pin roles to
labelled nodes. Colocated mode (GPU): engine i runs in learner rank i's bundle and each takes
half of its GPU. Guaranteed: `check_resources` runs before any actor starts and names every
resource that is short, by how much, and for which role; placement groups that cannot be
reserved in time fail with the same kind of message. Not covered: autoscaling (a cluster that
would grow to fit is reported as too small).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core.config import Config

READY_TIMEOUT_S = 180


class PlacementError(RuntimeError):
    """The cluster cannot hold the config; the message says what is missing."""


def engine_bundles(cfg: Config) -> list[dict[str, float]]:
    """One rollout engine's bundles: CPUs (+ GPU) in the first, one more GPU per extra TP rank."""
    c = cfg.cluster
    first = {"CPU": c.rollout_cpus, **c.rollout_resources}
    if c.use_gpu:
        first["GPU"] = 1.0
    return [first] + [{"GPU": 1.0} for _ in range(c.rollout_tp - 1)]


def learner_bundles(cfg: Config) -> list[dict[str, float]]:
    c = cfg.cluster
    cpus = c.learner_cpus + (c.rollout_cpus if c.colocate else 0.0)
    bundle = {"CPU": cpus, **c.learner_resources}
    if c.use_gpu:
        bundle["GPU"] = 1.0
    return [dict(bundle) for _ in range(cfg.learner.world_size)]


def reward_bundle(cfg: Config) -> dict[str, float]:
    return {"CPU": cfg.cluster.reward_cpus, **cfg.cluster.reward_resources}


def demands(cfg: Config) -> list[tuple[str, dict[str, float]]]:
    """(role, bundle) for every bundle the run needs."""
    out = [("learner ranks", b) for b in learner_bundles(cfg)]
    if not cfg.cluster.colocate:
        out += [
            ("rollout engines", b)
            for _ in range(cfg.cluster.rollout_engines)
            for b in engine_bundles(cfg)
        ]
    out += [("reward actors", reward_bundle(cfg)) for _ in range(cfg.reward.num_actors)]
    return out


def contention_note(cfg: Config) -> str | None:
    """A line for the run's log when one_step_off overlaps the engine and the learner on the
    same CPU cores (the learner, or the engine, not pinned), else None."""
    pinned = cfg.learner.cpu_cores and cfg.rollout.omp_threads_bind != "auto"
    if cfg.trainer.mode != "one_step_off" or cfg.cluster.use_gpu or pinned:
        return None
    return (
        "note: trainer.mode=one_step_off with the engine and the learner on the same CPU cores: "
        "the two phases contend, and a step can take longer than in sync mode (the demo on two "
        "cores: 123 s against 86 s); give each its own cores with rollout.omp_threads_bind and "
        "learner.cpu_cores, or use sync (docs/speed.md)"
    )


def check_resources(cfg: Config, nodes: list[dict[str, float]] | None = None) -> None:
    """Raise `PlacementError` naming what is short when the cluster's alive nodes (or `nodes`,
    each a resources dict) cannot hold the config."""
    if nodes is None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need: Counter[str] = Counter()
    by_role: dict[str, Counter[str]] = {}
    for role, bundle in demands(cfg):
        need.update(bundle)
        by_role.setdefault(role, Counter()).update(bundle)
    have: Counter[str] = Counter()
    for node in nodes:
        have.update(node)
    problems = []
    for resource, amount in sorted(need.items()):
        if have[resource] + 1e-9 < amount:
            parts = ", ".join(
                f"{role} {c[resource]:g}" for role, c in by_role.items() if c[resource]
            )
            problems.append(
                f"{resource}: needs {amount:g} ({parts}), the cluster has {have[resource]:g}"
            )
    if not cfg.cluster.colocate:
        engine = Counter()
        for b in engine_bundles(cfg):
            engine.update(b)
        if not any(all(node.get(r, 0) + 1e-9 >= a for r, a in engine.items()) for node in nodes):
            problems.append(
                f"one rollout engine needs {dict(engine)} on a single node; no node has "
                "that (lower cluster.rollout_tp or use bigger nodes)"
            )
    for role, bundle in demands(cfg):
        if not any(all(node.get(r, 0) + 1e-9 >= a for r, a in bundle.items()) for node in nodes):
            problems.append(f"no node can hold one of the {role}: {bundle}")
            break
    if problems:
        raise PlacementError(
            "the Ray cluster cannot hold this config:\n  - " + "\n  - ".join(problems) + "\n"
            "Add nodes (or `ray start --resources` labels), or lower cluster.rollout_engines, "
            "learner.world_size, reward.num_actors or the cluster.*_cpus values."
        )


@dataclass
class Placement:
    """The reserved placement groups and the Ray options for each actor."""

    cfg: Config
    engines: list[PlacementGroup]
    learner: PlacementGroup

    def rollout_options(self, i: int) -> dict:
        c = self.cfg.cluster
        if c.colocate:  # engine i shares learner rank i's GPU
            pg, bundle, gpus = self.learner, i, 0.5
        else:
            pg, bundle, gpus = self.engines[i], 0, (1.0 if c.use_gpu and c.rollout_tp == 1 else 0)
        return {
            "num_cpus": c.rollout_cpus,
            "num_gpus": gpus,
            "resources": dict(c.rollout_resources),
            # vLLM's tensor-parallel workers (Ray executor) land in the same group
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=True
            ),
        }

    def learner_options(self, rank: int) -> dict:
        c = self.cfg.cluster
        return {
            "num_cpus": c.learner_cpus,
            "num_gpus": (0.5 if c.colocate else 1.0) if c.use_gpu else 0,
            "resources": dict(c.learner_resources),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.learner, placement_group_bundle_index=rank
            ),
        }

    def shutdown(self) -> None:
        """Release the placement groups (after the actors are gone)."""
        from ray.util.placement_group import remove_placement_group

        for pg in [*self.engines, self.learner]:
            remove_placement_group(pg)


def reserve(cfg: Config, run_id: str) -> Placement:
    """Check the cluster, then reserve every placement group (named after the run)."""
    check_resources(cfg)
    c = cfg.cluster
    engines = (
        []
        if c.colocate
        else [
            placement_group(
                engine_bundles(cfg), strategy="STRICT_PACK", name=f"cohort-{run_id}-rollout-{i}"
            )
            for i in range(c.rollout_engines)
        ]
    )
    learner = placement_group(
        learner_bundles(cfg), strategy="PACK", name=f"cohort-{run_id}-learner"
    )
    try:
        ray.get([pg.ready() for pg in [*engines, learner]], timeout=READY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as e:
        raise PlacementError(
            f"placement groups were not reserved within {READY_TIMEOUT_S} s: the cluster has "
            "the resources in total but they are in use or fragmented across nodes (see `ray "
            "status`)"
        ) from e
    return Placement(cfg, engines, learner)


def report(rollout, learner, rewards) -> dict[str, list[dict]]:
    """Where every actor landed: {role: [{"index": i, "node_id", "cores", "threads"}]} (cores
    it may run on; torch's threads for engines and learner ranks), written by the driver to
    `<run dir>/placement.json`."""
    roles = {"rollout": rollout.actors, "learner": learner.ranks, "reward": rewards.actors}
    return {
        role: [
            {"index": i, **where}
            for i, where in enumerate(ray.get([a.where.remote() for a in actors]))
        ]
        for role, actors in roles.items()
    }
