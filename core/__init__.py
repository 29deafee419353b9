"""The base layer: what every other package may import, and which imports nothing of ours.

`config` (the experiment's schema, loading and checks), `records` (the data that travels
between actors: prompts, samples, groups, scores), `errors`, `pools` (spreading work over
actors, replacing dead ones) and `faults` (the fault-injection hooks the tests use). `rollout/`,
`reward/` and `learner/` import only this package; `cluster/` imports them all.
"""
