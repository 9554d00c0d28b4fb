"""The controller's web dashboard and /metrics: a read-only view of the fleet, served on its
own HTTP port from the daemon's event loop (docs/dashboard.md)."""

from layerfleet.controller.dashboard.server import Dashboard

__all__ = ["Dashboard"]
