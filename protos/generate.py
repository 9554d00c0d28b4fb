"""Regenerate the Python stubs in protos/layerfleet/v1 from the .proto files.

    python protos/generate.py          # rewrite the stubs
    python protos/generate.py --check  # exit 1 if the checked-in stubs drifted

The stubs are checked in so the agent installs without grpcio-tools; the --check mode
(run by tests/test_protos.py) keeps them honest. Beside them, descriptors.binpb: the
.proto files as a FileDescriptorSet *with their comments*, which server reflection serves
(agent/reflection.py), so grpcurl's `describe` shows what each field means.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "layerfleet" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".binpb")
DESCRIPTORS = "descriptors.binpb"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev extra only
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(HERE)) for p in PACKAGE.glob("*.proto"))
    (out_dir / "layerfleet" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / 'layerfleet' / 'v1' / DESCRIPTORS}",
        "--include_source_info",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the message above")


def generated_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp) / "layerfleet" / "v1")
        if args.check:
            current = {p.name for p in generated_files(PACKAGE)}
            drift = [p.name for p in fresh if p.name not in current
                     or not filecmp.cmp(p, PACKAGE / p.name, shallow=False)]
            drift += sorted(current - {p.name for p in fresh})
            if drift:
                print("stale generated stubs: " + ", ".join(drift)
                      + " (run: python protos/generate.py)", file=sys.stderr)
                return 1
            return 0
        for old in generated_files(PACKAGE):
            old.unlink()
        for p in fresh:
            shutil.copy(p, PACKAGE / p.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
