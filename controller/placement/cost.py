"""predict(): the one source of every number the engine reports.

For stage i on device d covering layers [a, b):
  transfer_in = link(previous, d).seconds(cut_bytes[a])     previous = source for stage 0
  compute     = flops[a:b] / d.flops_per_s + d.overhead_s
  energy      = d.busy_w * compute + cut_bytes[a] * link.joules_per_byte
                (the device's power while it works on this request: a device that is on
                anyway costs its idle power whatever we do, so slow-but-frugal devices
                win only when they really are more efficient per FLOP)
Latency   = sum of (transfer_in + compute) + link(last, source).seconds(output bytes).
Throughput (pipeline of requests) = 1 / the slowest resource: each stage's service time,
  and each link's serialisation time (bytes / bandwidth; latency overlaps in a pipeline).
Replicas:
  balanced - requests are spread by least outstanding work: a stage's service time is
    1 / sum(1 / compute_r) over its devices; latency and energy are those of the share-
    weighted average replica.
  hedged   - every request goes to all the stage's devices and the first answer wins:
    latency uses the fastest replica (transfer + compute), energy is paid on every
    replica, service time is that of the slowest replica (each one runs every request).
"""

from __future__ import annotations

from layerfleet.controller.placement.model import (
    Fleet,
    ModelCosts,
    Prediction,
    Stage,
    StagePrediction,
)


def _stage(costs: ModelCosts, fleet: Fleet, previous: str, device_id: str, a: int, b: int
           ) -> tuple[float, float, float]:
    """(transfer_in_s, compute_s, energy_j) of one device running [a, b)."""
    device = fleet.device(device_id)
    link = fleet.link(previous, device_id)
    transfer = link.seconds(costs.cut_bytes[a])
    compute = costs.range_flops(a, b) / device.flops_per_s + device.overhead_s
    energy = device.busy_w * compute + costs.cut_bytes[a] * link.joules_per_byte
    return transfer, compute, energy


def predict(costs: ModelCosts, fleet: Fleet, stages: list[Stage], *,
            mode: str = "balanced") -> Prediction:
    if not stages or stages[0].start != 0 or stages[-1].stop != costs.n or any(
            x.stop != y.start for x, y in zip(stages, stages[1:])):
        raise ValueError(f"stages must cover layers 0..{costs.n} contiguously: {stages}")
    latency = energy = 0.0
    bottleneck = 0.0
    out: list[StagePrediction] = []
    links: list[tuple[str, str, int, float]] = []
    previous = [fleet.source]
    for i, stage in enumerate(stages):
        # The previous stage's output leaves from whichever of its devices ran it; use the
        # primary's link (replicas of a stage sit on the same network in practice).
        prev = previous[0]
        runs = [_stage(costs, fleet, prev, d, stage.start, stage.stop) for d in stage.devices]
        computes = [max(c, 1e-15) for _, c, _ in runs]  # a free stage still has a rate
        if len(runs) == 1 or mode == "balanced":
            capacity = sum(1.0 / c for c in computes)
            shares = [(1.0 / c) / capacity for c in computes]
            transfer = sum(s * t for s, (t, _, _) in zip(shares, runs))
            compute = sum(s * c for s, (_, c, _) in zip(shares, runs))
            if len(runs) == 1:  # exactly the device's own numbers, no rounding
                transfer, compute = runs[0][0], runs[0][1]
            stage_energy = sum(s * e for s, (_, _, e) in zip(shares, runs)) \
                if len(runs) > 1 else runs[0][2]
            service = 1.0 / capacity if len(runs) > 1 else runs[0][1]
        elif mode == "hedged":
            fastest = min(runs, key=lambda r: r[0] + r[1])
            transfer, compute = fastest[0], fastest[1]
            stage_energy = sum(e for _, _, e in runs)
            service = max(computes)
        else:
            raise ValueError(f"unknown replica mode {mode!r}")
        nbytes = costs.cut_bytes[stage.start]
        link = fleet.link(prev, stage.device)
        link_time = nbytes / link.bandwidth_Bps if prev != stage.device else 0.0
        bottleneck = max(bottleneck, service, link_time)
        latency += transfer + compute
        energy += stage_energy
        links.append((prev, stage.device, int(nbytes), transfer))
        out.append(StagePrediction(stage=i, compute_s=compute, transfer_in_s=transfer,
                                   memory_bytes=costs.range_memory(stage.start, stage.stop),
                                   energy_j=stage_energy, link_bytes=int(nbytes),
                                   service_s=service))
        previous = list(stage.devices)
    back = fleet.link(previous[0], fleet.source)
    out_bytes = costs.cut_bytes[costs.n]
    latency += back.seconds(out_bytes)
    energy += out_bytes * back.joules_per_byte
    bottleneck = max(bottleneck, out_bytes / back.bandwidth_Bps)
    links.append((previous[0], fleet.source, int(out_bytes), back.seconds(out_bytes)))
    return Prediction(latency_s=latency, throughput_rps=1.0 / bottleneck if bottleneck > 0
                      else float("inf"), energy_j=energy, stages=out, links=links)


def fits(costs: ModelCosts, fleet: Fleet, stages: list[Stage]) -> bool:
    """Every device of every stage has the memory for its range."""
    return all(costs.range_memory(s.start, s.stop) <= fleet.device(d).memory_bytes
               for s in stages for d in s.devices)
