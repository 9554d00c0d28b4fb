"""The closed sets of words the controller uses for modes and states, in one place.

The registry stores these words, the planner and deployer decide with them, and wire.py maps
each set onto its enum in controller.proto (checked when wire.py is imported, so the two
never drift apart). Imports nothing: the CLI and the Python client use it on a base install.
"""

from __future__ import annotations

from typing import Literal, get_args

Objective = Literal["latency", "throughput", "energy", "weighted"]
Redundancy = Literal["none", "gnh"]
DeviceState = Literal["up", "down", "duplicate"]
FoundBy = Literal["mdns", "join", "static"]
DeploymentState = Literal["deploying", "active", "degraded", "failed", "undeployed"]
StageState = Literal["ready", "down"]
Phase = Literal["plan", "convert", "upload", "route", "done", "failed"]

OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
REDUNDANCY: tuple[Redundancy, ...] = get_args(Redundancy)
DEVICE_STATES: tuple[DeviceState, ...] = get_args(DeviceState)
FOUND_BY: tuple[FoundBy, ...] = get_args(FoundBy)
DEPLOYMENT_STATES: tuple[DeploymentState, ...] = get_args(DeploymentState)
STAGE_STATES: tuple[StageState, ...] = get_args(StageState)
PHASES: tuple[Phase, ...] = get_args(Phase)


def stage_state(device: str, device_states: dict[str, str]) -> StageState:
    """A stage is ready while its device is up (replicas that are down show as such on
    their own devices; the stage still serves through the others)."""
    return "ready" if device_states.get(device) == "up" else "down"
