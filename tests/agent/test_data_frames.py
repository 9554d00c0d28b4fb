"""The data port's framing, without sockets: whatever way the bytes are split on
arrival, the frames come out exactly as sent; a frame that cannot be read is skipped and
answered, and only a peer that is not speaking the protocol ends the connection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layerfleet.agent import dataport
from layerfleet.v1 import agent_pb2

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64,
          np.bool_]


def _wire(*frames: list[bytes | memoryview], preface: bool = True) -> bytes:
    return (dataport.PREFACE if preface else b"") + b"".join(
        bytes(piece) for pieces in frames for piece in pieces)


def _feed(reader: dataport.FrameReader, data: bytes, cuts: list[int]) -> list[dataport.Frame]:
    """Deliver `data` to the reader in pieces ending at `cuts`, as recv() would."""
    frames: list[dataport.Frame] = []
    position = 0
    for end in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        while position < end:
            buffer = reader.get_buffer()
            n = min(len(buffer), end - position)
            assert n > 0
            buffer[:n] = data[position:position + n]
            position += n
            frames += reader.buffer_updated(n)
    return frames


def _request(request_id: int, arrays: dict[str, np.ndarray]) -> list[bytes | memoryview]:
    return dataport.encode_frame(agent_pb2.InferRequest(request_id=request_id, deployment="d",
                                                    stage=1), arrays)


arrays_st = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 40), max_size=3)),
    max_size=3)


@settings(max_examples=60, deadline=None)
@given(specs=st.lists(arrays_st, min_size=1, max_size=4), cuts=st.lists(st.integers(0, 1 << 16)))
def test_frames_survive_any_split_of_the_byte_stream(specs, cuts):
    rng = np.random.default_rng(0)
    sent = [{name: (rng.random(shape) * 100).astype(dtype) for name, (dtype, shape) in s.items()}
            for s in specs]
    data = _wire(*(_request(i, arrays) for i, arrays in enumerate(sent)))
    frames = _feed(dataport.FrameReader(agent_pb2.InferRequest), data,
                   [c % (len(data) + 1) for c in cuts])
    assert [f.message.request_id for f in frames] == list(range(len(sent)))
    for frame, arrays in zip(frames, sent):
        assert frame.error is None and frame.message.deployment == "d"
        assert list(frame.arrays) == list(arrays)
        for name, array in arrays.items():
            assert frame.arrays[name].dtype == array.dtype
            np.testing.assert_array_equal(frame.arrays[name], array)


def test_a_big_tensor_is_received_in_place_and_the_next_frame_still_parses():
    big = np.random.default_rng(1).random((1, 700, 1024), dtype=np.float32)  # 2.8 MB
    small = np.arange(10, dtype=np.int64)
    data = _wire(_request(1, {"big": big, "tail": small}), _request(2, {"x": small}))
    frames = _feed(dataport.FrameReader(agent_pb2.InferRequest), data,
                   list(range(0, len(data), 100_000)))
    assert [f.message.request_id for f in frames] == [1, 2]
    np.testing.assert_array_equal(frames[0].arrays["big"], big)
    np.testing.assert_array_equal(frames[0].arrays["tail"], small)
    np.testing.assert_array_equal(frames[1].arrays["x"], small)
    assert frames[0].arrays["big"].flags.writeable  # owned, not a view of a reused buffer


def test_sending_hands_big_tensors_over_without_copying_them():
    big = np.random.default_rng(2).random((1, 256, 1024), dtype=np.float32)
    pieces = _request(1, {"big": big})
    assert len(pieces) == 2   # header and the first 64 KiB in one write, the rest as a view
    assert len(pieces[0]) > dataport.COALESCE_BYTES
    assert np.shares_memory(np.frombuffer(pieces[1], np.uint8), big)


def test_a_small_frame_is_one_write():
    assert len(_request(1, {"x": np.zeros(1000, np.float32)})) == 1


def test_sizes_that_do_not_add_up_are_invalid_argument_and_the_frame_is_skipped():
    header = agent_pb2.InferRequest(request_id=5)
    header.tensors.add(name="x", dtype=1, shape=[4])   # 16 bytes of float32 ...
    body = header.SerializeToString()
    liar = dataport._FIXED.pack(len(body), 12) + body + b"\x00" * 12   # ... but 12 sent
    data = _wire([liar], _request(6, {"y": np.ones(3, np.float32)}))
    frames = _feed(dataport.FrameReader(agent_pb2.InferRequest), data, [])
    assert frames[0].message.request_id == 5 and frames[0].arrays == {}
    code, message = frames[0].error
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "need 16 bytes, the frame carries 12" in message
    assert frames[1].error is None
    np.testing.assert_array_equal(frames[1].arrays["y"], np.ones(3, np.float32))


def test_an_unknown_dtype_is_invalid_argument():
    header = agent_pb2.InferRequest(request_id=1)
    header.tensors.add(name="x", dtype=99, shape=[1])
    body = header.SerializeToString()
    frames = _feed(dataport.FrameReader(agent_pb2.InferRequest),
                   _wire([dataport._FIXED.pack(len(body), 0) + body]), [])
    assert frames[0].error[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown wire dtype 99" in frames[0].error[1]


def test_a_request_over_the_size_limit_is_resource_exhausted_and_skipped():
    reader = dataport.FrameReader(agent_pb2.InferRequest, max_payload_bytes=1000)
    data = _wire(_request(1, {"x": np.zeros(1000, np.float32)}),
                 _request(2, {"x": np.zeros(10, np.float32)}))
    frames = _feed(reader, data, [50, 500])
    assert frames[0].error[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4000 bytes" in frames[0].error[1] and "1000" in frames[0].error[1]
    assert frames[1].error is None and frames[1].arrays["x"].shape == (10,)


def test_a_peer_that_is_not_speaking_the_protocol_is_refused():
    with pytest.raises(dataport.DataProtocolError, match="not a layerfleet data port"):
        _feed(dataport.FrameReader(agent_pb2.InferRequest), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [])


def test_a_corrupt_header_ends_the_connection():
    reader = dataport.FrameReader(agent_pb2.InferRequest)
    with pytest.raises(dataport.DataProtocolError, match="frame header of"):
        _feed(reader, dataport.PREFACE + dataport._FIXED.pack(1 << 30, 0), [])
    reader = dataport.FrameReader(agent_pb2.InferRequest)
    with pytest.raises(dataport.DataProtocolError, match="unreadable frame header"):
        _feed(reader, dataport.PREFACE + dataport._FIXED.pack(3, 0) + b"\xff\xff\xff", [])


def test_a_long_stream_of_small_frames_wraps_the_scratch_buffer_intact():
    # Tiny frames arriving in big reads: the scratch fills up with a header cut in two at
    # its end, which must move to the front intact.
    rng = np.random.default_rng(3)
    sent = [rng.random(int(n), dtype=np.float32) for n in rng.integers(1, 20, size=12_000)]
    data = _wire(*(_request(i, {"x": x}) for i, x in enumerate(sent)))
    assert len(data) > 2 * dataport.SCRATCH_BYTES
    frames = _feed(dataport.FrameReader(agent_pb2.InferRequest), data,
                   [dataport.SCRATCH_BYTES * k + 17 * k for k in range(1, 4)])
    assert len(frames) == len(sent)
    for frame, x in zip(frames, sent):
        np.testing.assert_array_equal(frame.arrays["x"], x)


# -- relaying an answer without decoding it (links.py, pipeline.relay) ----------------------


class _Socket:
    """What send_raw_frame writes, collected."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, piece) -> None:
        self.data += bytes(piece)


def _answer_from_downstream(arrays: dict[str, np.ndarray]) -> list[bytes | memoryview]:
    hop = agent_pb2.HopTiming(device_id="c", stage=2, compute_s=0.5)
    return dataport.encode_frame(agent_pb2.InferResponse(request_id=7, hops=[hop],
                                                         exited_at_stage=-1), arrays)


@pytest.mark.parametrize("size", [10, 200_000], ids=["small", "big"])
def test_a_relayed_answer_reads_as_the_same_answer_with_our_id_and_our_hop_first(size):
    from layerfleet.agent import answers

    arrays = {"probs": np.arange(size, dtype=np.float32), "ids": np.arange(3, dtype=np.int64)}
    raw = dataport.FrameReader(agent_pb2.InferResponse, raw=True)
    (frame,) = _feed(raw, _wire(_answer_from_downstream(arrays)), [5, 4000])
    assert frame.arrays == {} and frame.message.request_id == 7
    theirs = answers.from_frame(frame)
    assert isinstance(theirs, answers.Raw)
    mine = agent_pb2.HopTiming(device_id="b", stage=1, compute_s=0.25)
    answer = answers.relay(42, mine, theirs)
    assert isinstance(answer, answers.Raw)

    sock = _Socket()
    dataport.send_raw_frame(sock, answer.header, answer.payload)
    (out,) = _feed(dataport.FrameReader(agent_pb2.InferResponse),
                   _wire([bytes(sock.data)]), [])
    assert out.message.request_id == 42 and out.message.exited_at_stage == -1
    assert [(h.device_id, h.stage) for h in out.message.hops] == [("b", 1), ("c", 2)]
    assert out.arrays.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(out.arrays[name], array)
    decoded = answers.decoded(answer)   # what gRPC Infer sends instead
    assert decoded.request_id == 42 and [h.stage for h in decoded.hops] == [1, 2]
    np.testing.assert_array_equal(decoded.outputs["probs"], arrays["probs"])


def test_a_relayed_answer_to_request_id_zero_is_decoded_since_proto3_cannot_write_zero():
    from layerfleet.agent import answers

    arrays = {"probs": np.ones(4, np.float32)}
    (frame,) = _feed(dataport.FrameReader(agent_pb2.InferResponse, raw=True),
                     _wire(_answer_from_downstream(arrays)), [])
    answer = answers.relay(0, agent_pb2.HopTiming(stage=1), answers.from_frame(frame))
    assert isinstance(answer, answers.Outputs) and answer.request_id == 0
    assert [h.stage for h in answer.hops] == [1, 2]
    np.testing.assert_array_equal(answer.outputs["probs"], arrays["probs"])
