"""Telemetry, energy and metrics. This machine has no RAPL, no INA219 and no thermal zone,
so the RAPL counter is read from a fake sysfs tree and the INA219 from datasheet register
values (both say so below); the power model and /metrics are real."""

from __future__ import annotations

import urllib.request

import pytest
from layerfleet.agent import metrics
from layerfleet.agent.energy import (
    BOARDS,
    PowerModel,
    RaplCounter,
    detect_board,
    ina219_bus_volts,
    ina219_calibration,
    ina219_watts,
)
from layerfleet.agent.telemetry import Telemetry


def test_power_model_interpolates_between_idle_and_busy():
    pi4 = BOARDS["raspberry-pi-4"]
    assert (pi4.idle_w, pi4.busy_w) == (2.7, 6.4)
    assert pi4.watts(0.0) == 2.7 and pi4.watts(1.0) == 6.4
    assert pi4.watts(0.5) == pytest.approx(4.55)
    # one core of four busy for 2 s: a quarter of the dynamic power
    assert pi4.busy_joules(2.0, 1, 4) == pytest.approx((6.4 - 2.7) / 4 * 2)


def test_board_detection_reads_the_device_tree_model(tmp_path):
    model = tmp_path / "model"
    model.write_text("Raspberry Pi 4 Model B Rev 1.4\x00")
    assert detect_board(model) == "raspberry-pi-4"
    assert detect_board(tmp_path / "missing") == "generic-x86"


def test_rapl_counter_handles_wraparound(tmp_path):
    # FAKE sysfs: this machine exposes no RAPL zones.
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    counter = RaplCounter(tmp_path)
    (zone / "energy_uj").write_text("950000\n")
    assert counter.update() == pytest.approx(0.05)
    (zone / "energy_uj").write_text("50000\n")  # wrapped past 1 J
    assert counter.update() == pytest.approx(0.1)


def test_ina219_register_decoding_follows_the_datasheet():
    # FAKE register values (no I2C sensor here), from TI SBOS448G worked examples.
    assert ina219_calibration(0.1, 1e-4) == 4096
    assert ina219_bus_volts(0x5DA2) == pytest.approx(((0x5DA2 >> 3) & 0x1FFF) * 0.004)
    assert ina219_bus_volts(5000 // 4 << 3) == pytest.approx(5.0)
    assert ina219_watts(2500, 1e-4) == pytest.approx(5.0)


def test_samples_label_their_energy_method_and_attribute_joules_per_shard():
    telemetry = Telemetry(PowerModel("raspberry-pi-4", 2.7, 6.4))
    joules = telemetry.record_inference("abc", 0.5, threads=telemetry.cores)
    assert joules == pytest.approx((6.4 - 2.7) * 0.5)
    sample = telemetry.sample()
    assert sample.energy_method == "model:raspberry-pi-4"
    assert 2.7 <= sample.power_w <= 6.4
    assert sample.memory_total > sample.memory_available > 0
    assert sample.agent_rss > 0
    stats = telemetry.shards["abc"]
    assert stats.count == 1 and stats.quantile(0.99) == 0.5


def test_metrics_endpoint_serves_base_units():
    port, stop = metrics.start_metrics_server(0)
    metrics.observe_inference("f" * 64, 0.004, 0.01)
    metrics.observe_request("ok")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=5).read().decode()
    finally:
        stop()
    assert 'layerfleet_inference_seconds_count{shard="ffffffffffff"} 1.0' in body
    assert 'layerfleet_inference_joules_total{shard="ffffffffffff"} 0.01' in body
    assert 'layerfleet_requests_total{status="ok"} 1.0' in body
