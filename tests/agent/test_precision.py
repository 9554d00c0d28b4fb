"""Quantised shards and encoded activations through real agents: each precision, with
each kind of hop, computes exactly what the same shards compute handed over in one process
(run-local with the same --activations), on the data port and over gRPC Infer."""

from __future__ import annotations

import numpy as np
import pytest
from layerfleet.agent import codecs
from layerfleet.agent.client import AgentClient
from layerfleet.controller.partition.local import run_local

from ..partition.models import digits, digits_cnn
from .conftest import Split, deploy_chain

CASES = [("int8", "int8"), ("int8", "fp32"), ("int8", "fp16+lz4"), ("fp16", "fp16"),
         ("fp16", "int8+zstd"), ("dynamic", "int8")]


@pytest.fixture(scope="session")
def digit_splits(tmp_path_factory, shard_cache) -> dict[str, Split]:
    from layerfleet.controller.partition import Analysis, split_model

    model = digits_cnn()
    analysis = Analysis(model)
    out = {}
    for precision in ("fp32", "fp16", "dynamic", "int8"):
        directory = tmp_path_factory.mktemp(f"digits-{precision}")
        out[precision] = Split(directory, split_model(
            model, [2, 4], directory, cache_dir=shard_cache, analysis=analysis,
            precision=precision, calibration={"digit": digits(64)}))
    return out


def test_int8_shards_pass_int8_across_their_cuts(digit_splits):
    from layerfleet.agent.runtime import ShardRunner

    split = digit_splits["int8"]
    runners = [ShardRunner(split.shard(i)) for i in range(3)]
    assert [s.precision for s in split.manifest.shards] == ["int8"] * 3
    assert runners[0].inputs[0].dtype == np.float32, "the client's float input"
    assert runners[-1].outputs[0].dtype == np.float32, "floats back to the client"
    for before, after in zip(runners, runners[1:]):
        (out,), (inp,) = before.outputs, after.inputs
        assert out.dtype == inp.dtype == np.int8
        assert out.affine.same_as(inp.affine), "calibrated on the same tensor"


@pytest.mark.parametrize("transport", ["dataport", "grpc"])
@pytest.mark.parametrize(("precision", "activations"), CASES)
async def test_each_precision_through_agents_matches_one_process(agents, digit_splits,
                                                                 precision, activations,
                                                                 transport):
    split = digit_splits[precision]
    servers = [await agents(f"a{i}", data_port="auto" if transport == "dataport" else "off")
               for i in range(3)]
    await deploy_chain(split, servers, activations=activations, precision=precision)
    samples = digits(8, offset=500)
    fmt = codecs.WireFormat.parse(activations)
    async with AgentClient(servers[0].address) as client:
        for x in samples:
            reply = await client.infer("d", {"digit": x[None]})
            expected = run_local(split.directory, {"digit": x[None]}, activations=fmt)
            (name,) = expected
            assert reply.outputs[name].dtype == np.float32
            np.testing.assert_array_equal(reply.outputs[name], expected[name])
        assert client.transport == transport
    assert [servers[i].pipeline.hops.kind(servers[i + 1].address)
            for i in range(2)] == [transport] * 2
    routes = [r for s in servers for r in s.pipeline.routes.values()]
    assert {r.precision for r in routes} == {precision}
    assert codecs.WireFormat.from_pb(routes[0].activations) == fmt


async def test_a_route_with_an_unknown_wire_format_is_refused(agents, digit_splits):
    from layerfleet.agent.client import AgentError
    from layerfleet.v1 import agent_pb2

    server = await agents("a")
    async with AgentClient(server.address) as client:
        sha = await client.upload_shard(digit_splits["fp32"].shard(2))
        route = agent_pb2.Route(deployment="d", stage=0, shard_sha256=sha)
        route.activations.precision = 7
        with pytest.raises(AgentError, match="unknown wire format"):
            await client._unary(client._stub.SetRoute, route)


async def test_benchmark_measures_float32_and_int8_speed(agents):
    from layerfleet.agent.client import AgentError

    server = await agents("a")
    async with AgentClient(server.address) as client:
        fp32 = await client.benchmark(runs=3)
        int8 = await client.benchmark(runs=3, precision="int8")
        assert fp32.flops_per_run == int8.flops_per_run > 0, "the same convolutions"
        assert fp32.flops_per_s > 0 and int8.flops_per_s > 0
        with pytest.raises(AgentError, match="no calibration shard for precision 'int4'"):
            await client.benchmark(precision="int4")
