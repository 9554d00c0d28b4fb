"""The controller's /metrics, scraped over HTTP from a real controller and three agents:
names follow the Prometheus naming guide, and the numbers are the requests that were made."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from layerfleet.controller.errors import ApiError
from layerfleet.controller.observed import link_crossings
from layerfleet.controller.router import HopTime
from prometheus_client.parser import text_string_to_metric_families

from .test_dashboard import deploy_small
from .test_end_to_end import call

# The Prometheus guide: base units, spelled out, as the last word (counters before _total).
UNITS = ("seconds", "bytes", "joules", "watts", "celsius", "ratio")
COUNTS = ("devices", "deployments", "requests", "errors")  # plain counts: no unit
GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "layerfleet-dashboard.json"
NOT_BASE_UNITS = re.compile(r"_(milli|micro|kilo|mega|giga)?(ms|us|percent|kb|mb|gb|"
                            r"milliseconds|microseconds|minutes|hours|kilobytes|megabytes)_")


def scrape(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, sample_name: str, **labels: str) -> float:
    family = families[re.sub(r"_(total|count|sum|bucket)$", "", sample_name)]
    found = [s.value for s in family.samples
             if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (sample_name, labels, family.samples)
    return found[0]


async def test_metrics_are_named_by_the_guide_and_count_what_happened(dashboard_fleet,
                                                                      tmp_path):
    fleet = dashboard_fleet
    dep = await deploy_small(fleet, tmp_path)
    chain = [s.device for s in dep.stages]
    x = np.random.default_rng(0).random((1, 12, 12, 1), dtype=np.float32)
    with fleet.client() as client:
        for _ in range(10):
            await call(client.infer, "small", x)
        with pytest.raises(ApiError) as err:
            await call(client.infer, "small", np.zeros((1, 3), np.float32))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    families = await call(scrape, fleet.controller.dashboard.url)

    for name, family in families.items():
        assert name.startswith("layerfleet_controller_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert not NOT_BASE_UNITS.search(name + "_"), f"{name}: not a base unit"
        last = name.rsplit("_", 1)[-1]
        assert last in UNITS or last in COUNTS, f"{name}: no unit as its last word"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert last == "seconds", f"{name}: histograms here are durations"

    assert value(families, "layerfleet_controller_devices", state="up") == 3
    assert value(families, "layerfleet_controller_devices", state="down") == 0
    assert value(families, "layerfleet_controller_deployments", state="active") == 1
    assert value(families, "layerfleet_controller_requests_total", deployment="small") == 11
    assert value(families, "layerfleet_controller_request_errors_total", deployment="small",
                 code="INVALID_ARGUMENT") == 1
    assert value(families, "layerfleet_controller_request_duration_seconds_count",
                 deployment="small") == 10
    for stage, device in enumerate(chain):
        assert value(families, "layerfleet_controller_hop_compute_seconds_count",
                     deployment="small", stage=str(stage), device=device) == 10
    # Bytes per link: the input into stage 0, the cut's activation into the later stages.
    assert value(families, "layerfleet_controller_link_transmit_bytes_total",
                 deployment="small", src="client", dst=chain[0]) == 10 * x.nbytes
    for i in range(1, len(chain)):
        assert value(families, "layerfleet_controller_link_transmit_bytes_total",
                     deployment="small", src=chain[i - 1], dst=chain[i]) == \
            10 * dep.plan.stages[i].bytes_in
    for device in chain:
        assert value(families, "layerfleet_controller_device_memory_total_bytes",
                     device=device) > 0
        assert value(families, "layerfleet_controller_device_energy_joules_total",
                     device=device) > 0

    # The shipped Grafana dashboard only queries series the controller exports.
    exported = set(families) | {s.name for f in families.values() for s in f.samples}
    queries = [t["expr"] for p in json.loads(GRAFANA.read_text())["panels"]
               for t in p["targets"]]
    used = {n for q in queries for n in re.findall(r"layerfleet_[a-z_]+", q)}
    assert used and used <= exported, sorted(used - exported)


def test_link_times_come_from_the_hop_timings():
    """A hop's forward_s is its round trip to the rest of the chain: the link into the next
    stage took that minus everything the next stage and later reported."""
    hops = [HopTime("a", 0, queue_s=0.001, compute_s=0.010, forward_s=0.050),
            HopTime("b", 1, queue_s=0.002, compute_s=0.020, forward_s=0.020),
            HopTime("c", 2, queue_s=0.000, compute_s=0.015, forward_s=0.0)]
    links = link_crossings(0.070, hops, [100, 200, 300])
    assert [(l.src, l.dst, l.nbytes) for l in links] == [
        ("client", "a", 100), ("a", "b", 200), ("b", "c", 300)]
    assert [round(l.seconds, 6) for l in links] == [0.009, 0.008, 0.005]
