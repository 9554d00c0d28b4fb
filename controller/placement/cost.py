"""The cost model: the one source of every formula the engine uses, and predict().

The formulas are written once, as functions of plain numbers (they work unchanged on numpy
arrays, which is how the solvers evaluate every cut at once):

  compute_s          flops / flops_per_s + overhead_s
  transfer_s         rtt_s / 2 + nbytes / bandwidth_Bps           (one-way, one link)
  serialisation_s    nbytes / bandwidth_Bps                       (what a pipeline overlaps not)
  compute_energy_j   busy_w * compute_s
  link_energy_j      nbytes * joules_per_byte
  memory_bytes       weights + bytes in + bytes out + 2 * largest layer output inside

Precision (placement/precision.py), applied to the inputs before any solver runs:
  precision_flops_per_s   flops_per_s * speedup        (measured per device and precision:
                                                         the Benchmark call, fp32 and int8)
  encoded_bytes           nbytes * wire_ratio          (encoded bytes per float32 byte on a
                                                         hop: measured on the user's data, or
                                                         the encoding's nominal 1, 1/2, 1/4)
  The model's input (cut 0) and output (cut n) stay float32: clients send and get floats.

For stage i on device d covering layers [a, b):
  transfer_in = transfer_s(cut_bytes[a]) on link(previous, d)    previous = source for stage 0
  compute     = compute_s(flops[a:b], d)
  energy      = compute_energy_j(d.busy_w, compute) + link_energy_j(cut_bytes[a], that link)
                (the device's power while it works on this request: a device that is on
                anyway costs its idle power whatever we do, so slow-but-frugal devices
                win only when they really are more efficient per FLOP)
Latency   = sum of (transfer_in + compute) + transfer_s(output bytes) on link(last, source).
Energy    = sum of stage energies + link_energy_j(output bytes) on link(last, source): the
  answer's trip back is paid like every other hop.
Throughput (pipeline of requests) = 1 / the slowest resource: each stage's service time,
  and each link's serialisation time (latency overlaps in a pipeline), the way back included.
Replicas:
  balanced - requests are spread by least outstanding work: a stage's service time is
    1 / sum(1 / compute_r) over its devices; latency and energy are those of the share-
    weighted average replica.
  hedged   - every request goes to all the stage's devices and the first answer wins:
    latency uses the fastest replica (transfer + compute), energy is paid on every
    replica, service time is that of the slowest replica (each one runs every request).

The solvers (dp.py, search.py, fleet_scale.py, baselines.py) build their tables with
compute_table() and link_table() below, which call the same formulas; a property test
(tests/placement/test_cost_tables.py) pins every table entry to predict().
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from layerfleet.controller.placement.model import (
    Device,
    Fleet,
    ModelCosts,
    Prediction,
    Stage,
    StagePrediction,
)

Number = Any  # a float or a numpy array of them


def compute_s(flops: Number, flops_per_s: Number, overhead_s: Number) -> Number:
    return flops / flops_per_s + overhead_s


def transfer_s(nbytes: Number, bandwidth_Bps: Number, rtt_s: Number) -> Number:
    return rtt_s / 2 + nbytes / bandwidth_Bps


def serialisation_s(nbytes: Number, bandwidth_Bps: Number) -> Number:
    return nbytes / bandwidth_Bps


def compute_energy_j(busy_w: Number, seconds: Number) -> Number:
    return busy_w * seconds


def link_energy_j(nbytes: Number, joules_per_byte: Number) -> Number:
    return nbytes * joules_per_byte


def precision_flops_per_s(flops_per_s: Number, speedup: Number) -> Number:
    return flops_per_s * speedup


def encoded_bytes(nbytes: Number, wire_ratio: Number) -> Number:
    return nbytes * wire_ratio


def memory_bytes(weights: Number, bytes_in: Number, bytes_out: Number,
                 largest_inner: Number) -> Number:
    """Weights in the flatbuffer, the tensors crossing in and out, and twice the largest
    layer output inside (its input and output alive at once): an arena estimate."""
    return weights + bytes_in + bytes_out + 2 * largest_inner


# -- tables for the solvers -------------------------------------------------------------

def memory_table(costs: ModelCosts, positions: Sequence[int]) -> np.ndarray:
    """[p, q] = costs.range_memory(positions[p], positions[q]) for p < q, inf elsewhere."""
    pos = np.asarray(positions)
    P = len(pos)
    params = np.concatenate([[0.0], np.cumsum(np.asarray(costs.param_bytes, dtype=float))])
    acts = np.asarray(costs.activation_bytes, dtype=float)
    cut = np.asarray(costs.cut_bytes, dtype=float)
    mem = np.full((P, P), np.inf)
    for i in range(P - 1):
        inner = np.maximum.accumulate(acts[pos[i]:])[pos[i + 1:] - pos[i] - 1]
        mem[i, i + 1:] = memory_bytes(params[pos[i + 1:]] - params[pos[i]], cut[pos[i]],
                                      cut[pos[i + 1:]], inner)
    return mem


def compute_table(costs: ModelCosts, devices: Sequence[Device], positions: Sequence[int],
                  memory: np.ndarray | None = None) -> np.ndarray:
    """[k, p, q] = compute seconds of devices[k] running positions[p]..positions[q]; inf
    where the range does not fit the device's memory or q <= p."""
    pos = np.asarray(positions)
    mem = memory_table(costs, pos) if memory is None else memory
    flops = np.array([costs.range_flops(0, int(p)) for p in pos])
    span = flops[None, :] - flops[:, None]
    table = np.empty((len(devices), len(pos), len(pos)))
    for k, d in enumerate(devices):
        c = compute_s(span, d.flops_per_s, d.overhead_s)
        c[mem > d.memory_bytes] = np.inf
        table[k] = c
    return table


@dataclass(frozen=True)
class LinkTable:
    """Per ordered pair of nodes (devices, then the source last) and per candidate cut:
    transfer seconds, serialisation seconds and joules of handing that cut over."""

    transfer: np.ndarray    # [N, N, P]
    serialise: np.ndarray   # [N, N, P]
    joules: np.ndarray      # [N, N, P]


def link_table(fleet: Fleet, nodes: Sequence[str], cut_bytes: np.ndarray,
               same_node: bool = False) -> LinkTable:
    """Links between every ordered pair of `nodes`; a node to itself is inf (a device runs
    one stage) unless `same_node` (class envelopes: two members of one class)."""
    N = len(nodes)
    bw = np.empty((N, N))
    rtt = np.empty((N, N))
    jpb = np.empty((N, N))
    for i, a in enumerate(nodes):
        for j, b in enumerate(nodes):
            link = fleet.link(a, b)
            bw[i, j], rtt[i, j], jpb[i, j] = link.bandwidth_Bps, link.rtt_s, link.joules_per_byte
    return link_table_from(bw, rtt, jpb, cut_bytes, same_node)


def link_table_from(bw: np.ndarray, rtt: np.ndarray, jpb: np.ndarray, cut_bytes: np.ndarray,
                    same_node: bool = False) -> LinkTable:
    nbytes = np.asarray(cut_bytes, dtype=float)[None, None, :]
    transfer = transfer_s(nbytes, bw[:, :, None], rtt[:, :, None])
    serialise = serialisation_s(nbytes, bw[:, :, None])
    joules = link_energy_j(nbytes, jpb[:, :, None])
    if not same_node:
        idx = np.arange(len(bw))
        for table in (transfer, serialise, joules):
            table[idx, idx, :] = np.inf
    return LinkTable(transfer, serialise, joules)


# -- predict ----------------------------------------------------------------------------

def _stage(costs: ModelCosts, fleet: Fleet, previous: str, device_id: str, a: int, b: int
           ) -> tuple[float, float, float]:
    """(transfer_in_s, compute_s, energy_j) of one device running [a, b)."""
    device = fleet.device(device_id)
    link = fleet.link(previous, device_id)
    transfer = transfer_s(costs.cut_bytes[a], link.bandwidth_Bps, link.rtt_s)
    compute = compute_s(costs.range_flops(a, b), device.flops_per_s, device.overhead_s)
    energy = compute_energy_j(device.busy_w, compute) + link_energy_j(costs.cut_bytes[a],
                                                                       link.joules_per_byte)
    return transfer, compute, energy


def predict(costs: ModelCosts, fleet: Fleet, stages: list[Stage], *,
            mode: str = "balanced") -> Prediction:
    if not stages or stages[0].start != 0 or stages[-1].stop != costs.n or any(
            x.stop != y.start for x, y in itertools.pairwise(stages)):
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
        link_time = serialisation_s(nbytes, link.bandwidth_Bps) if prev != stage.device \
            else 0.0
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
    back_s = transfer_s(out_bytes, back.bandwidth_Bps, back.rtt_s)
    latency += back_s
    energy += link_energy_j(out_bytes, back.joules_per_byte)
    bottleneck = max(bottleneck, serialisation_s(out_bytes, back.bandwidth_Bps))
    links.append((previous[0], fleet.source, int(out_bytes), back_s))
    return Prediction(latency_s=latency, throughput_rps=1.0 / bottleneck if bottleneck > 0
                      else float("inf"), energy_j=energy, stages=out, links=links)


def fits(costs: ModelCosts, fleet: Fleet, stages: list[Stage]) -> bool:
    """Every device of every stage has the memory for its range."""
    return all(costs.range_memory(s.start, s.stop) <= fleet.device(d).memory_bytes
               for s in stages for d in s.devices)
