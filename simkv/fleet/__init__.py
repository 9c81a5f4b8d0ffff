"""Fleets: pools of full simkv replicas on one simulated clock behind a router (issue 14).

`spec` holds the scenario's `fleet:` section, `pools` builds each pool's replicas, `router` the
routing policies, `run` simulates a fleet and summarises it (whole fleet, per pool, per replica).
"""
