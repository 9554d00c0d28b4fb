"""The checked-in stubs are exactly what protoc makes of the .proto files."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_match_the_protos() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _all_fields():
    from layerfleet.v1 import agent_pb2, controller_pb2, fleet_pb2, tensor_pb2

    def walk(message):
        yield from message.fields
        for nested in message.nested_types:
            yield from walk(nested)

    for module in (agent_pb2, controller_pb2, fleet_pb2, tensor_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(message)


def test_field_names_are_lower_snake_case_so_every_language_keeps_them() -> None:
    """Mixed case (bandwidth_Bps) is renamed by proto-loader and JSON mappings."""
    bad = [f.full_name for f in _all_fields() if not re.fullmatch(r"[a-z][a-z0-9_]*", f.name)]
    assert not bad, f"rename to lower snake case: {bad}"
