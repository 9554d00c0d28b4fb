"""`layerfleet`: the user's command line.

Commands live in modules by topic and are imported only when invoked, so `layerfleet
devices` never pays for importing TensorFlow:
  cli_partition  inspect, split, run-local, accuracy  (local, no controller needed)
  cli_fleet      devices, models, plan, deploy, deployments, infer, undeploy, events, demo
"""

from __future__ import annotations

import importlib

import click

# command name -> (module, attribute, one-line help shown by `layerfleet --help`)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("cli_partition", "inspect", "Show a model's layers, cut points, FLOPs and bytes."),
    "split": ("cli_partition", "split", "Cut a model into LiteRT shards with a manifest."),
    "run-local": ("cli_partition", "run_local",
                  "Run a split model's shards in order in this process."),
    "accuracy": ("cli_partition", "accuracy",
                 "Measure a quantised split's agreement with float32 on held-out data."),
    "devices": ("cli_fleet", "devices", "List the fleet's devices with calibration and telemetry."),
    "models": ("cli_fleet", "models", "Register models (add) and list them (list)."),
    "plan": ("cli_fleet", "plan", "Dry run: best placements of a model, with predictions."),
    "deploy": ("cli_fleet", "deploy", "Plan, convert, push and activate a model on the fleet."),
    "deployments": ("cli_fleet", "deployments", "List deployments or describe one."),
    "infer": ("cli_fleet", "infer", "Run an input (.npy, .npz, image) through a deployment."),
    "undeploy": ("cli_fleet", "undeploy", "Stop a deployment and free its shards."),
    "events": ("cli_fleet", "events", "Show (or follow) the controller's event log."),
    "demo": ("demo", "demo", "Start a controller and 3 agents here and run the whole path."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(f"layerfleet.controller.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, help_) for name, (_, _, help_) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layerfleet")
def main() -> None:
    """Run one neural network across a fleet of Raspberry Pis and the cloud."""
