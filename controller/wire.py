"""controller.proto's enums <-> the words the controller uses (states.py).

Each closed set is an enum on the wire, so reflection and every generated client list the
allowed values; inside, the registry and the deciders keep plain words. `Labels` maps one
set both ways and is checked at import: an enum value without a word, or a word without an
enum value, fails loudly here rather than as a silent UNSPECIFIED on the wire.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import unknown_fields
from layerfleet.controller import states
from layerfleet.v1 import controller_pb2


class Labels:
    """One enum of controller.proto and its words: OBJECTIVE_LATENCY <-> "latency"."""

    def __init__(self, enum: Any, prefix: str, words: tuple[str, ...]) -> None:
        self.enum, self.prefix, self.words = enum, prefix, words
        names = {n for n in enum.DESCRIPTOR.values_by_name if n != f"{prefix}UNSPECIFIED"}
        expected = {prefix + w.upper() for w in words}
        if names != expected:
            raise ImportError(f"{enum.DESCRIPTOR.full_name} and states.py disagree: "
                              f"{sorted(names ^ expected)}")

    def wire(self, word: str) -> int:
        """The enum value of a word; ValueError for a word outside the set."""
        if word not in self.words:
            raise ValueError(f"{word!r}: choose one of {', '.join(self.words)}")
        return int(self.enum.Value(self.prefix + word.upper()))

    def word(self, value: int, default: str = "") -> str:
        """The word of an enum value (UNSPECIFIED: `default`; newer than this code:
        'unknown(N)')."""
        if value == 0:
            return default
        try:
            return str(self.enum.Name(value))[len(self.prefix):].lower()
        except ValueError:
            return f"unknown({value})"

    def normalize_json(self, value: Any) -> str:
        """A stored value in proto JSON (enum name), or a word stored before the enum
        existed, as the enum name ParseDict accepts."""
        if isinstance(value, str) and value in self.words:
            return self.prefix + value.upper()
        return str(value)


OBJECTIVE = Labels(controller_pb2.Objective, "OBJECTIVE_", states.OBJECTIVES)
REDUNDANCY = Labels(controller_pb2.Redundancy, "REDUNDANCY_", states.REDUNDANCY)
DEVICE_STATE = Labels(controller_pb2.DeviceState, "DEVICE_STATE_", states.DEVICE_STATES)
FOUND_BY = Labels(controller_pb2.FoundBy, "FOUND_BY_", states.FOUND_BY)
DEPLOYMENT_STATE = Labels(controller_pb2.DeploymentState, "DEPLOYMENT_STATE_",
                          states.DEPLOYMENT_STATES)
STAGE_STATE = Labels(controller_pb2.StageState, "STAGE_STATE_", states.STAGE_STATES)
PHASE = Labels(controller_pb2.DeployPhase, "DEPLOY_PHASE_", states.PHASES)

# Fields that were strings before they became enums at a new number (controller.proto keeps
# the old numbers reserved). A client built from the old .proto still sends the old numbers;
# it is told so instead of silently getting the defaults.
MOVED = {
    "layerfleet.v1.PlanRequest": {2: "objective", 4: "redundancy"},
    "layerfleet.v1.DeployRequest": {3: "objective", 5: "redundancy"},
}


def old_fields(message: Any) -> list[str]:
    """Names of the string fields an old client sent where enums are now expected."""
    moved = MOVED.get(message.DESCRIPTOR.full_name, {})
    if not moved:
        return []
    return sorted({moved[f.field_number] for f in unknown_fields.UnknownFieldSet(message)
                   if f.field_number in moved})
