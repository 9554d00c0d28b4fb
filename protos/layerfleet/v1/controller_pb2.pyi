from layerfleet.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_LATENCY: _ClassVar[Objective]
    OBJECTIVE_THROUGHPUT: _ClassVar[Objective]
    OBJECTIVE_ENERGY: _ClassVar[Objective]
    OBJECTIVE_WEIGHTED: _ClassVar[Objective]

class Redundancy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDUNDANCY_UNSPECIFIED: _ClassVar[Redundancy]
    REDUNDANCY_NONE: _ClassVar[Redundancy]
    REDUNDANCY_GNH: _ClassVar[Redundancy]

class DeviceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATE_UNSPECIFIED: _ClassVar[DeviceState]
    DEVICE_STATE_UP: _ClassVar[DeviceState]
    DEVICE_STATE_DOWN: _ClassVar[DeviceState]
    DEVICE_STATE_DUPLICATE: _ClassVar[DeviceState]

class FoundBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FOUND_BY_UNSPECIFIED: _ClassVar[FoundBy]
    FOUND_BY_MDNS: _ClassVar[FoundBy]
    FOUND_BY_JOIN: _ClassVar[FoundBy]
    FOUND_BY_STATIC: _ClassVar[FoundBy]

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DEPLOYING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ACTIVE: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DEGRADED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_UNDEPLOYED: _ClassVar[DeploymentState]

class StageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_STATE_UNSPECIFIED: _ClassVar[StageState]
    STAGE_STATE_READY: _ClassVar[StageState]
    STAGE_STATE_DOWN: _ClassVar[StageState]

class DeployPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOY_PHASE_UNSPECIFIED: _ClassVar[DeployPhase]
    DEPLOY_PHASE_PLAN: _ClassVar[DeployPhase]
    DEPLOY_PHASE_CONVERT: _ClassVar[DeployPhase]
    DEPLOY_PHASE_UPLOAD: _ClassVar[DeployPhase]
    DEPLOY_PHASE_ROUTE: _ClassVar[DeployPhase]
    DEPLOY_PHASE_DONE: _ClassVar[DeployPhase]
    DEPLOY_PHASE_FAILED: _ClassVar[DeployPhase]

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    KERAS: _ClassVar[ModelFormat]
    H5: _ClassVar[ModelFormat]
    SAVEDMODEL_TAR: _ClassVar[ModelFormat]
    BUILTIN: _ClassVar[ModelFormat]
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_LATENCY: Objective
OBJECTIVE_THROUGHPUT: Objective
OBJECTIVE_ENERGY: Objective
OBJECTIVE_WEIGHTED: Objective
REDUNDANCY_UNSPECIFIED: Redundancy
REDUNDANCY_NONE: Redundancy
REDUNDANCY_GNH: Redundancy
DEVICE_STATE_UNSPECIFIED: DeviceState
DEVICE_STATE_UP: DeviceState
DEVICE_STATE_DOWN: DeviceState
DEVICE_STATE_DUPLICATE: DeviceState
FOUND_BY_UNSPECIFIED: FoundBy
FOUND_BY_MDNS: FoundBy
FOUND_BY_JOIN: FoundBy
FOUND_BY_STATIC: FoundBy
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_DEPLOYING: DeploymentState
DEPLOYMENT_STATE_ACTIVE: DeploymentState
DEPLOYMENT_STATE_DEGRADED: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState
DEPLOYMENT_STATE_UNDEPLOYED: DeploymentState
STAGE_STATE_UNSPECIFIED: StageState
STAGE_STATE_READY: StageState
STAGE_STATE_DOWN: StageState
DEPLOY_PHASE_UNSPECIFIED: DeployPhase
DEPLOY_PHASE_PLAN: DeployPhase
DEPLOY_PHASE_CONVERT: DeployPhase
DEPLOY_PHASE_UPLOAD: DeployPhase
DEPLOY_PHASE_ROUTE: DeployPhase
DEPLOY_PHASE_DONE: DeployPhase
DEPLOY_PHASE_FAILED: DeployPhase
MODEL_FORMAT_UNSPECIFIED: ModelFormat
KERAS: ModelFormat
H5: ModelFormat
SAVEDMODEL_TAR: ModelFormat
BUILTIN: ModelFormat

class ModelUpload(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("name", "format", "builtin", "input_shape", "sha256", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ModelFormat
    builtin: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., builtin: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "digest", "source", "layers", "flops", "param_bytes", "inputs", "outputs", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    PARAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    source: str
    layers: int
    flops: int
    param_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    created_at: float
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., source: _Optional[str] = ..., layers: _Optional[int] = ..., flops: _Optional[int] = ..., param_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., created_at: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("id", "address", "hostname", "arch", "cores", "memory_bytes", "runtime", "version", "state", "found_by", "flops_per_s", "link_bandwidth_bytes_per_s", "link_rtt_s", "last_seen", "power_w", "energy_method", "cpu_percent", "memory_available", "temperature_c", "joules_total")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FOUND_BY_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    LINK_BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    LINK_RTT_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_METHOD_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    JOULES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    hostname: str
    arch: str
    cores: int
    memory_bytes: int
    runtime: str
    version: str
    state: DeviceState
    found_by: FoundBy
    flops_per_s: float
    link_bandwidth_bytes_per_s: float
    link_rtt_s: float
    last_seen: float
    power_w: float
    energy_method: str
    cpu_percent: float
    memory_available: int
    temperature_c: float
    joules_total: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., arch: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., runtime: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[DeviceState, str]] = ..., found_by: _Optional[_Union[FoundBy, str]] = ..., flops_per_s: _Optional[float] = ..., link_bandwidth_bytes_per_s: _Optional[float] = ..., link_rtt_s: _Optional[float] = ..., last_seen: _Optional[float] = ..., power_w: _Optional[float] = ..., energy_method: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_available: _Optional[int] = ..., temperature_c: _Optional[float] = ..., joules_total: _Optional[float] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesReply(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStatus]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceStatus, _Mapping]]] = ...) -> None: ...

class MeasureLinksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LinkStatus(_message.Message):
    __slots__ = ("a", "b", "bandwidth_bytes_per_s", "rtt_s", "error")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    bandwidth_bytes_per_s: float
    rtt_s: float
    error: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., bandwidth_bytes_per_s: _Optional[float] = ..., rtt_s: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class MeasureLinksReply(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[LinkStatus]
    def __init__(self, links: _Optional[_Iterable[_Union[LinkStatus, _Mapping]]] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("model", "objective", "sla_ms", "redundancy", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    SLA_MS_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    objective: Objective
    sla_ms: float
    redundancy: Redundancy
    top_k: int
    def __init__(self, model: _Optional[str] = ..., objective: _Optional[_Union[Objective, str]] = ..., sla_ms: _Optional[float] = ..., redundancy: _Optional[_Union[Redundancy, str]] = ..., top_k: _Optional[int] = ...) -> None: ...

class StagePlan(_message.Message):
    __slots__ = ("start", "stop", "device", "replicas", "compute_s", "transfer_in_s", "memory_bytes", "energy_j", "bytes_in", "first_layer", "last_layer")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_IN_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    FIRST_LAYER_FIELD_NUMBER: _ClassVar[int]
    LAST_LAYER_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    device: str
    replicas: _containers.RepeatedScalarFieldContainer[str]
    compute_s: float
    transfer_in_s: float
    memory_bytes: int
    energy_j: float
    bytes_in: int
    first_layer: str
    last_layer: str
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ..., device: _Optional[str] = ..., replicas: _Optional[_Iterable[str]] = ..., compute_s: _Optional[float] = ..., transfer_in_s: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., energy_j: _Optional[float] = ..., bytes_in: _Optional[int] = ..., first_layer: _Optional[str] = ..., last_layer: _Optional[str] = ...) -> None: ...

class LinkUse(_message.Message):
    __slots__ = ("src", "dst", "bytes", "seconds")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    bytes: int
    seconds: float
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("strategy", "objective", "latency_s", "throughput_rps", "energy_j", "stages", "links")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    objective: Objective
    latency_s: float
    throughput_rps: float
    energy_j: float
    stages: _containers.RepeatedCompositeFieldContainer[StagePlan]
    links: _containers.RepeatedCompositeFieldContainer[LinkUse]
    def __init__(self, strategy: _Optional[str] = ..., objective: _Optional[_Union[Objective, str]] = ..., latency_s: _Optional[float] = ..., throughput_rps: _Optional[float] = ..., energy_j: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[StagePlan, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[LinkUse, _Mapping]]] = ...) -> None: ...

class PlanReply(_message.Message):
    __slots__ = ("candidates", "baselines")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    baselines: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., baselines: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("model", "name", "objective", "sla_ms", "redundancy", "plan")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    SLA_MS_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    objective: Objective
    sla_ms: float
    redundancy: Redundancy
    plan: int
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., objective: _Optional[_Union[Objective, str]] = ..., sla_ms: _Optional[float] = ..., redundancy: _Optional[_Union[Redundancy, str]] = ..., plan: _Optional[int] = ...) -> None: ...

class DeployProgress(_message.Message):
    __slots__ = ("deployment", "phase", "message", "fraction")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    phase: DeployPhase
    message: str
    fraction: float
    def __init__(self, deployment: _Optional[str] = ..., phase: _Optional[_Union[DeployPhase, str]] = ..., message: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class StageStatus(_message.Message):
    __slots__ = ("stage", "start", "stop", "device", "address", "replicas", "shard_sha256", "shard_bytes", "state")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SHARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHARD_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    stage: int
    start: int
    stop: int
    device: str
    address: str
    replicas: _containers.RepeatedScalarFieldContainer[str]
    shard_sha256: str
    shard_bytes: int
    state: StageState
    def __init__(self, stage: _Optional[int] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., device: _Optional[str] = ..., address: _Optional[str] = ..., replicas: _Optional[_Iterable[str]] = ..., shard_sha256: _Optional[str] = ..., shard_bytes: _Optional[int] = ..., state: _Optional[_Union[StageState, str]] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "model", "state", "error", "stages", "plan", "inputs", "outputs", "created_at", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    state: DeploymentState
    error: str
    stages: _containers.RepeatedCompositeFieldContainer[StageStatus]
    plan: Candidate
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    created_at: float
    updated_at: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., error: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., plan: _Optional[_Union[Candidate, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsReply(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UndeployRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InferCall(_message.Message):
    __slots__ = ("request_id", "deployment", "tensors")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    deployment: str
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    def __init__(self, request_id: _Optional[int] = ..., deployment: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("device", "stage", "queue_s", "compute_s", "forward_s")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    device: str
    stage: int
    queue_s: float
    compute_s: float
    forward_s: float
    def __init__(self, device: _Optional[str] = ..., stage: _Optional[int] = ..., queue_s: _Optional[float] = ..., compute_s: _Optional[float] = ..., forward_s: _Optional[float] = ...) -> None: ...

class InferResult(_message.Message):
    __slots__ = ("request_id", "tensors", "hops", "total_s", "exited_at_stage", "error_code", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    total_s: float
    exited_at_stage: int
    error_code: int
    error: str
    def __init__(self, request_id: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., hops: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., total_s: _Optional[float] = ..., exited_at_stage: _Optional[int] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_id", "follow")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    follow: bool
    def __init__(self, after_id: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "time", "kind", "subject", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: float
    kind: str
    subject: str
    message: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
