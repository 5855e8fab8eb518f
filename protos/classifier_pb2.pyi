from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FloatTensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: FloatTensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[FloatTensor, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "images", "top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "index", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    score: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("present", "passed", "summary", "details_json")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    present: bool
    passed: bool
    summary: str
    details_json: str
    def __init__(self, present: _Optional[bool] = ..., passed: _Optional[bool] = ..., summary: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "version", "available_versions", "architecture", "parameters", "onnx_bytes", "opset", "quantization", "execution_provider", "input_shape", "labels", "mean", "std", "pixel_scale", "dataset", "test_accuracy", "max_batch_size", "verification", "selftest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ONNX_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SCALE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    SELFTEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    available_versions: _containers.RepeatedScalarFieldContainer[int]
    architecture: str
    parameters: int
    onnx_bytes: int
    opset: int
    quantization: str
    execution_provider: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    pixel_scale: float
    dataset: str
    test_accuracy: float
    max_batch_size: int
    verification: Verification
    selftest: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., available_versions: _Optional[_Iterable[int]] = ..., architecture: _Optional[str] = ..., parameters: _Optional[int] = ..., onnx_bytes: _Optional[int] = ..., opset: _Optional[int] = ..., quantization: _Optional[str] = ..., execution_provider: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., pixel_scale: _Optional[float] = ..., dataset: _Optional[str] = ..., test_accuracy: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ..., selftest: _Optional[str] = ...) -> None: ...
