"""The controller's Prometheus metrics, served at /metrics on its HTTP port (dashboard/).

Names follow the Prometheus naming guide and node_exporter: a `layerfleet_controller_`
prefix, base units in the name (seconds, bytes, joules, watts, celsius, ratio), `_total` on
counters, histograms for durations. Fleet and deployment state are read from the registry at
scrape time (never stale); request, hop and link figures come from what the router observed
(observed.py). One CollectorRegistry per daemon, so two controllers in one process (tests)
never share counters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from layerfleet.controller.observed import HopLike, LinkCrossing
from layerfleet.controller.registry import Registry
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEVICE_STATES = ("up", "down", "duplicate")
DEPLOYMENT_STATES = ("deploying", "active", "degraded", "failed", "undeployed")
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0, 2.5)


class FleetCollector:
    """Devices and deployments by state, and each device's last telemetry, at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []  # names are fixed; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        devices = self.registry.devices()
        by_state = GaugeMetricFamily("layerfleet_controller_devices",
                                     "Devices the controller knows, by state", labels=["state"])
        for state in DEVICE_STATES:
            by_state.add_metric([state], sum(1 for d in devices if d.state == state))
        yield by_state

        deployments = self.registry.deployments(include_undeployed=True)
        deps = GaugeMetricFamily("layerfleet_controller_deployments",
                                 "Deployments by state", labels=["state"])
        for state in DEPLOYMENT_STATES:
            deps.add_metric([state], sum(1 for d in deployments if d.state == state))
        yield deps

        power = GaugeMetricFamily("layerfleet_controller_device_power_watts",
                                  "Last reported board power (method: how it was measured)",
                                  labels=["device", "method"])
        cpu = GaugeMetricFamily("layerfleet_controller_device_cpu_utilisation_ratio",
                                "Last reported CPU utilisation over all cores, 0..1",
                                labels=["device"])
        temperature = GaugeMetricFamily("layerfleet_controller_device_temperature_celsius",
                                        "Last reported board temperature (absent: no sensor)",
                                        labels=["device"])
        available = GaugeMetricFamily("layerfleet_controller_device_memory_available_bytes",
                                      "Last reported available memory", labels=["device"])
        total = GaugeMetricFamily("layerfleet_controller_device_memory_total_bytes",
                                  "Memory of the device", labels=["device"])
        energy = CounterMetricFamily("layerfleet_controller_device_energy_joules",
                                     "Energy the agent counted since it started",
                                     labels=["device"])
        seen = GaugeMetricFamily("layerfleet_controller_device_last_seen_timestamp_seconds",
                                 "When the device was last heard from (unix time)",
                                 labels=["device"])
        for d in devices:
            if d.energy_method:
                power.add_metric([d.id, d.energy_method], d.power_w)
            cpu.add_metric([d.id], d.cpu_percent / 100.0)
            if d.temperature_c is not None:
                temperature.add_metric([d.id], d.temperature_c)
            available.add_metric([d.id], d.memory_available)
            total.add_metric([d.id], d.memory_bytes)
            energy.add_metric([d.id], d.joules_total)
            seen.add_metric([d.id], d.last_seen)
        yield from (power, cpu, temperature, available, total, energy, seen)


class ControllerMetrics:
    """Receives the router's observations (observed.Sink) and renders the exposition."""

    def __init__(self, registry: Registry) -> None:
        # No `*_created` series beside each counter and histogram: Prometheus ignores them in
        # the text format and they double what an operator scrolls through (process-wide).
        disable_created_metrics()
        self.prometheus = CollectorRegistry()
        self.prometheus.register(FleetCollector(registry))
        self.requests = Counter(
            "layerfleet_controller_requests", "Inference requests routed, by deployment",
            ["deployment"], registry=self.prometheus)
        self.errors = Counter(
            "layerfleet_controller_request_errors",
            "Inference requests that failed, by deployment and gRPC status code",
            ["deployment", "code"], registry=self.prometheus)
        self.duration = Histogram(
            "layerfleet_controller_request_duration_seconds",
            "Latency of a request as the controller saw it", ["deployment"],
            buckets=REQUEST_BUCKETS, registry=self.prometheus)
        self.queue = Histogram(
            "layerfleet_controller_hop_queue_seconds",
            "Time a request waited for a compute thread on a device",
            ["deployment", "stage", "device"], buckets=HOP_BUCKETS, registry=self.prometheus)
        self.compute = Histogram(
            "layerfleet_controller_hop_compute_seconds",
            "Time a device spent running its shard for a request",
            ["deployment", "stage", "device"], buckets=HOP_BUCKETS, registry=self.prometheus)
        self.link = Histogram(
            "layerfleet_controller_link_transfer_seconds",
            "Round trip over a link minus the work behind it (src 'client': the controller)",
            ["deployment", "src", "dst"], buckets=HOP_BUCKETS, registry=self.prometheus)
        self.link_bytes = Counter(
            "layerfleet_controller_link_transmit_bytes",
            "Activation bytes sent over a link (per request at the cut's size)",
            ["deployment", "src", "dst"], registry=self.prometheus)

    def request(self, deployment: str, seconds: float, hops: Sequence[HopLike],
                links: Sequence[LinkCrossing]) -> None:
        self.requests.labels(deployment).inc()
        self.duration.labels(deployment).observe(seconds)
        for hop in hops:
            labels = (deployment, str(hop.stage), hop.device)
            self.queue.labels(*labels).observe(hop.queue_s)
            self.compute.labels(*labels).observe(hop.compute_s)
        for link in links:
            self.link.labels(deployment, link.src, link.dst).observe(link.seconds)
            self.link_bytes.labels(deployment, link.src, link.dst).inc(link.nbytes)

    def failure(self, deployment: str, code: str) -> None:
        self.requests.labels(deployment).inc()
        self.errors.labels(deployment, code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.prometheus)
