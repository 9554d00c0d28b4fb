from layerfleet.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BALANCED: _ClassVar[ReplicaMode]
    HEDGED: _ClassVar[ReplicaMode]
BALANCED: ReplicaMode
HEDGED: ReplicaMode

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("device_id", "hostname", "arch", "cores", "memory_bytes", "runtime", "version", "shards", "routes", "address", "board", "data_port")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    arch: str
    cores: int
    memory_bytes: int
    runtime: str
    version: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    address: str
    board: str
    data_port: int
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., arch: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., runtime: _Optional[str] = ..., version: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., address: _Optional[str] = ..., board: _Optional[str] = ..., data_port: _Optional[int] = ...) -> None: ...

class ShardChunk(_message.Message):
    __slots__ = ("sha256", "size_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("sha256", "size_bytes", "inputs", "outputs")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListShardsReply(_message.Message):
    __slots__ = ("shards", "quota_bytes", "used_bytes")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    quota_bytes: int
    used_bytes: int
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., quota_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class RemoveShardRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class RemoveShardReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExitConfig(_message.Message):
    __slots__ = ("enabled", "output_name", "threshold")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    output_name: str
    threshold: float
    def __init__(self, enabled: _Optional[bool] = ..., output_name: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("deployment", "stage", "shard_sha256", "next_hops", "replica_mode", "hedge_k", "exit", "activations", "precision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOPS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_MODE_FIELD_NUMBER: _ClassVar[int]
    HEDGE_K_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    stage: int
    shard_sha256: str
    next_hops: _containers.RepeatedScalarFieldContainer[str]
    replica_mode: ReplicaMode
    hedge_k: int
    exit: ExitConfig
    activations: _tensor_pb2.WireFormat
    precision: str
    def __init__(self, deployment: _Optional[str] = ..., stage: _Optional[int] = ..., shard_sha256: _Optional[str] = ..., next_hops: _Optional[_Iterable[str]] = ..., replica_mode: _Optional[_Union[ReplicaMode, str]] = ..., hedge_k: _Optional[int] = ..., exit: _Optional[_Union[ExitConfig, _Mapping]] = ..., activations: _Optional[_Union[_tensor_pb2.WireFormat, _Mapping]] = ..., precision: _Optional[str] = ...) -> None: ...

class RouteAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveRouteRequest(_message.Message):
    __slots__ = ("deployment", "stage")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    stage: int
    def __init__(self, deployment: _Optional[str] = ..., stage: _Optional[int] = ...) -> None: ...

class ListRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoutesReply(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "deployment", "stage", "tensors", "more", "cancel", "timeout_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    deployment: str
    stage: int
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    more: bool
    cancel: bool
    timeout_s: float
    def __init__(self, request_id: _Optional[int] = ..., deployment: _Optional[str] = ..., stage: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., more: _Optional[bool] = ..., cancel: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class HopTiming(_message.Message):
    __slots__ = ("device_id", "stage", "queue_s", "compute_s", "forward_s")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stage: int
    queue_s: float
    compute_s: float
    forward_s: float
    def __init__(self, device_id: _Optional[str] = ..., stage: _Optional[int] = ..., queue_s: _Optional[float] = ..., compute_s: _Optional[float] = ..., forward_s: _Optional[float] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "tensors", "more", "hops", "exited_at_stage", "status_code", "status_message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_STAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    more: bool
    hops: _containers.RepeatedCompositeFieldContainer[HopTiming]
    exited_at_stage: int
    status_code: int
    status_message: str
    def __init__(self, request_id: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., more: _Optional[bool] = ..., hops: _Optional[_Iterable[_Union[HopTiming, _Mapping]]] = ..., exited_at_stage: _Optional[int] = ..., status_code: _Optional[int] = ..., status_message: _Optional[str] = ...) -> None: ...

class TelemetryRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class ShardStats(_message.Message):
    __slots__ = ("sha256", "count", "joules_per_inference", "p50_s", "p90_s", "p99_s")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    count: int
    joules_per_inference: float
    p50_s: float
    p90_s: float
    p99_s: float
    def __init__(self, sha256: _Optional[str] = ..., count: _Optional[int] = ..., joules_per_inference: _Optional[float] = ..., p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("time", "cpu_percent_per_core", "load1", "load5", "load15", "memory_total", "memory_available", "agent_rss", "temperature_c", "power_w", "energy_method", "joules_total", "shards")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_PER_CORE_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AGENT_RSS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_METHOD_FIELD_NUMBER: _ClassVar[int]
    JOULES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    time: float
    cpu_percent_per_core: _containers.RepeatedScalarFieldContainer[float]
    load1: float
    load5: float
    load15: float
    memory_total: int
    memory_available: int
    agent_rss: int
    temperature_c: float
    power_w: float
    energy_method: str
    joules_total: float
    shards: _containers.RepeatedCompositeFieldContainer[ShardStats]
    def __init__(self, time: _Optional[float] = ..., cpu_percent_per_core: _Optional[_Iterable[float]] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., memory_total: _Optional[int] = ..., memory_available: _Optional[int] = ..., agent_rss: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., energy_method: _Optional[str] = ..., joules_total: _Optional[float] = ..., shards: _Optional[_Iterable[_Union[ShardStats, _Mapping]]] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("runs", "precision")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    runs: int
    precision: str
    def __init__(self, runs: _Optional[int] = ..., precision: _Optional[str] = ...) -> None: ...

class BenchmarkReply(_message.Message):
    __slots__ = ("flops_per_s", "seconds_per_run", "flops_per_run")
    FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    flops_per_s: float
    seconds_per_run: float
    flops_per_run: int
    def __init__(self, flops_per_s: _Optional[float] = ..., seconds_per_run: _Optional[float] = ..., flops_per_run: _Optional[int] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class MeasureLinkRequest(_message.Message):
    __slots__ = ("address", "bytes")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    address: str
    bytes: int
    def __init__(self, address: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class LinkReply(_message.Message):
    __slots__ = ("bandwidth_bytes_per_s", "rtt_s")
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    bandwidth_bytes_per_s: float
    rtt_s: float
    def __init__(self, bandwidth_bytes_per_s: _Optional[float] = ..., rtt_s: _Optional[float] = ...) -> None: ...

class Faults(_message.Message):
    __slots__ = ("delay_ms",)
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    delay_ms: float
    def __init__(self, delay_ms: _Optional[float] = ...) -> None: ...
