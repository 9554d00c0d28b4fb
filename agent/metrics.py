"""Prometheus metrics (base units: seconds, joules, bytes) on a private registry."""

from __future__ import annotations

from collections.abc import Callable

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
INFERENCE_SECONDS = Histogram(
    "layerfleet_inference_seconds", "Compute time of one shard run", ["shard"],
    registry=REGISTRY, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                0.5, 1.0, 2.5))
INFERENCE_JOULES = Counter("layerfleet_inference_joules_total",
                           "Energy attributed to shard runs", ["shard"], registry=REGISTRY)
REQUESTS = Counter("layerfleet_requests_total", "Inference requests by outcome", ["status"],
                   registry=REGISTRY)
FORWARDED_BYTES = Counter("layerfleet_forwarded_bytes_total",
                          "Activation bytes sent to next hops", registry=REGISTRY)
MEMORY_AVAILABLE = Gauge("layerfleet_memory_available_bytes", "Available memory",
                         registry=REGISTRY)
AGENT_RSS = Gauge("layerfleet_agent_resident_bytes", "Agent resident memory",
                  registry=REGISTRY)
POWER = Gauge("layerfleet_power_watts", "Board power (see energy_method)", ["method"],
              registry=REGISTRY)
CPU = Gauge("layerfleet_cpu_utilisation_ratio", "CPU utilisation over all cores, 0..1",
            registry=REGISTRY)


def start_metrics_server(port: int, host: str = "127.0.0.1"
                         ) -> tuple[int, Callable[[], None]]:
    """Serve /metrics (port 0 picks a free port); returns the port and what stops it."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return int(server.server_port), stop


def observe_inference(shard: str, seconds: float, joules: float) -> None:
    INFERENCE_SECONDS.labels(shard[:12]).observe(seconds)
    INFERENCE_JOULES.labels(shard[:12]).inc(joules)


def observe_request(status: str) -> None:
    REQUESTS.labels(status).inc()


def observe_forwarded(nbytes: int) -> None:
    FORWARDED_BYTES.inc(nbytes)


def update_from_snapshot(snapshot: Any) -> None:
    MEMORY_AVAILABLE.set(snapshot.memory_available)
    AGENT_RSS.set(snapshot.agent_rss)
    POWER.labels(snapshot.energy_method).set(snapshot.power_w)
    cores = snapshot.cpu_percent_per_core
    CPU.set(sum(cores) / (100.0 * len(cores)) if cores else 0.0)
