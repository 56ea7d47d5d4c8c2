"""A faithful fake of ``pynvml`` that replays a recording of NVML, and the recorder that makes one.

The GPU meter talks to NVML through an object with ``pynvml``'s attribute names: in production the
``pynvml`` module itself, in tests a :class:`ReplayNvml`. A replay is driven by a *recording*, a
JSON-compatible dict (format ``gpuledger-nvml-recording/1``) that describes what a driver did over
time: the samples it put in its ring buffers, the readings of its counters, and which calls failed
when. Recordings come from :func:`synthetic_recording` (a described workload, exact values known
in advance) or from :func:`record_nvml` (polling a real GPU).

NVML semantics the replay reproduces
------------------------------------

* **Sampled metrics** (``nvmlDeviceGetSamples``, ``nvmlDeviceGetProcessUtilization``). The driver
  takes a sample every period (1/6 s to 1 s depending on the product; utilisation is the percent of
  that period during which a kernel ran) and keeps the newest *N* in a ring buffer. A read passes
  ``lastSeenTimeStamp`` (CPU µs since the Unix epoch) and gets the buffered samples strictly newer
  than it, oldest first; when there are none NVML answers ``NVML_ERROR_NOT_FOUND``. A reader that
  falls behind by more than *N* samples silently loses the oldest ones.
* **Per-process utilisation** is not a raw sample list: NVML answers one entry per process,
  aggregated over that process's samples newer than ``lastSeenTimeStamp`` and stamped with the
  newest of them (observed on real drivers: the same pid and timestamp come back with a different
  value when the cursor moves; see NVIDIA/go-nvml#51, Syllo/nvtop#110). NVML does not document the
  aggregate; the replay uses the rounded mean. Polled faster than the sample period, each entry is
  exactly one driver sample.
* **Counters and instantaneous readings** (energy, power, memory, running processes) are step
  functions: a call at time *T* returns the last reading taken at or before *T*; before the first
  reading, the first reading's value.
* **Errors** are the real ``pynvml`` classes: ``pynvml.NVMLError(code)`` maps to the subclass
  (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, ...), so ``except nvml.NVMLError`` works
  against both. A function whose stream is absent from the recording raises ``NotSupported``; a
  call before ``nvmlInit`` (or after the matching ``nvmlShutdown``) raises ``Uninitialized``.

Recording format
----------------

::

    {"format": "gpuledger-nvml-recording/1",
     "source": "synthetic: ..." | "recorded: <host>, <date>",
     "driver_version": "550.54.15",
     "init_error": null | "<error name>",        # nvmlInit raises it
     "errors": [<error window>, ...],            # optional; system functions only
     "devices": [
       {"index": 0, "name": "...", "uuid": "GPU-...", "memory_total": <bytes>,
        "parent": null | <index of the parent GPU, for a MIG instance>,
        "buffer": {"gpu_utilization": 120, "total_power": 120, "process_utilization": 120},
        "streams": {
          "gpu_utilization":     [[t_us, percent], ...],
          "total_power":         [[t_us, milliwatts], ...],
          "process_utilization": [[t_us, pid, sm, mem, enc, dec], ...],
          "energy":              [[t_us, millijoules], ...],
          "power":               [[t_us, milliwatts], ...],
          "memory_used":         [[t_us, bytes], ...],
          "processes":           [[t_us, [[pid, used_bytes_or_null], ...]], ...]},
        "errors": [{"function": "<pynvml name>" | "*", "error": "NotSupported",
                    "from_us": 0, "until_us": null, "sampling_type": <optional int>}]}]}

Every ``t_us`` is relative to the recording's start and may be negative (samples already in the
driver's buffer when the recording began). Timestamps never decrease within a stream. Error names
are the ``pynvml.NVMLError_<Name>`` suffixes (matched case-insensitively). A MIG instance's
``index`` is its index among its parent's MIG devices; MIG devices are not counted by
``nvmlDeviceGetCount`` and are reached by UUID or through their parent. Processes entries are
``[pid, used_bytes]`` or ``[pid, used_bytes, gpu_instance_id, compute_instance_id]``.

Why one module of this size: it is a faithful fake of one library (``pynvml``), function for
function, with the recorder that makes its recordings; users point ``sys.modules["pynvml"]`` at
this one module.
"""

from __future__ import annotations

import bisect
import copy
import ctypes
import dataclasses
import datetime
import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pynvml

__all__ = [
    "FORMAT",
    "Recording",
    "ReplayHandle",
    "ReplayNvml",
    "energy_reset",
    "error_names",
    "gpu_lost",
    "load_recording",
    "record_nvml",
    "save_recording",
    "synthetic_recording",
    "validate_recording",
]

Recording = dict[str, Any]
"""A recording: the JSON-compatible dict described in the module docstring."""

FORMAT: Final = "gpuledger-nvml-recording/1"

SAMPLE_STREAMS: Final = ("gpu_utilization", "total_power", "process_utilization")
"""Streams read from a driver ring buffer with a timestamp cursor."""
STEP_STREAMS: Final = ("energy", "power", "memory_used", "processes")
"""Streams of readings: the value at T is the last reading at or before T."""
DEFAULT_BUFFER: Final = 120
"""Ring-buffer depth assumed where a recording does not say (NVML does not document it)."""

_MIB: Final = 1 << 20
_GIB: Final = 1 << 30
DRIVER_OVERHEAD_BYTES: Final = 500 * _MIB
"""Synthetic recordings: device memory the driver and CUDA context use beyond the process's."""

_FOREVER_AGO_US: Final = -(10**15)
"""An error window start before any time a test uses (about 32 years before the start)."""
_NOT_AVAILABLE_UINT: Final = 0xFFFFFFFF
"""NVML's "not available" for an unsigned int: the GPU/compute instance id of a non-MIG process."""

_SAMPLING_STREAMS: Final[dict[int, str]] = {
    int(pynvml.NVML_GPU_UTILIZATION_SAMPLES): "gpu_utilization",
    int(pynvml.NVML_TOTAL_POWER_SAMPLES): "total_power",
}
_SAMPLING_TYPE_COUNT: Final = int(getattr(pynvml, "NVML_SAMPLINGTYPE_COUNT", 10))

_SYSTEM_FUNCTIONS: Final = ("nvmlSystemGetDriverVersion", "nvmlDeviceGetCount")
_DEVICE_FUNCTIONS: Final = (
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
)


def _error_codes() -> dict[str, tuple[str, int]]:
    """``lowercase name -> (canonical name, NVML code)`` for every ``pynvml.NVMLError_*`` class."""
    codes: dict[str, tuple[str, int]] = {}
    for attribute in dir(pynvml):
        if attribute.startswith("NVMLError_"):
            name = attribute.removeprefix("NVMLError_")
            codes[name.lower()] = (name, int(getattr(pynvml, attribute)().value))
    return codes


_ERROR_CODES: Final = _error_codes()


def error_names() -> list[str]:
    """The error names a recording may use: ``NotSupported``, ``GpuIsLost``, ... (pynvml's)."""
    return sorted(name for name, _ in _ERROR_CODES.values())


def _nvml_error(name: str) -> BaseException:
    """The exception real ``pynvml`` raises for ``name``.

    ``FunctionNotFound`` from an unversioned wrapper (``nvmlDeviceGetComputeRunningProcesses``) is
    turned by pynvml into ``NVMLLibraryMismatchError``, which is *not* an ``NVMLError``; the
    replay raises the same (see :meth:`ReplayNvml.nvmlDeviceGetComputeRunningProcesses`).
    """
    _, code = _ERROR_CODES[name.lower()]
    error: BaseException = pynvml.NVMLError(code)
    return error


def _error_name(error: BaseException) -> str | None:
    """The recording name of an NVML failure, or None where ``error`` is not one."""
    if isinstance(error, pynvml.NVMLError):
        value = getattr(error, "value", None)
        for name, code in _ERROR_CODES.values():
            if code == value:
                return name
        return "Unknown"
    if isinstance(error, pynvml.NVMLLibraryMismatchError | AttributeError):
        return "FunctionNotFound"  # a wrapper or function this pynvml/driver lacks
    return None


# --------------------------------------------------------------------------------------------
# Validation


class _Invalid(ValueError):
    """A recording problem at a path inside the recording (joined into the final message)."""


def _fail(path: str, message: str) -> _Invalid:
    return _Invalid(f"{path}: {message}" if path else message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(value: object, path: str, *, minimum: int | None = None) -> int:
    if not _is_int(value):
        raise _fail(path, f"expected an integer, got {value!r}")
    assert isinstance(value, int)
    if minimum is not None and value < minimum:
        raise _fail(path, f"must be >= {minimum}, got {value}")
    return value


def _check_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {value!r}")
    return value


def _check_list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise _fail(path, f"expected a list, got {type(value).__name__}")
    return list(value)


def _check_error_name(value: object, path: str) -> str:
    name = _check_str(value, path)
    if name.lower() not in _ERROR_CODES:
        raise _fail(path, f"unknown NVML error {name!r} (known: {', '.join(error_names())})")
    return name


def _check_errors(value: object, path: str, functions: Sequence[str]) -> None:
    for i, entry in enumerate(_check_list(value, path)):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(where, "expected an object")
        unknown = set(entry) - {"function", "error", "from_us", "until_us", "sampling_type"}
        if unknown:
            raise _fail(where, f"unknown keys {sorted(unknown)}")
        function = _check_str(entry.get("function"), f"{where}.function")
        if function != "*" and function not in functions:
            raise _fail(f"{where}.function", f"{function!r} is not one of {['*', *functions]}")
        _check_error_name(entry.get("error"), f"{where}.error")
        start = _check_int(entry.get("from_us"), f"{where}.from_us")
        until = entry.get("until_us")
        if until is not None and _check_int(until, f"{where}.until_us") <= start:
            raise _fail(f"{where}.until_us", "must be after from_us")
        if entry.get("sampling_type") is not None:
            _check_int(entry["sampling_type"], f"{where}.sampling_type", minimum=0)
            if function != "nvmlDeviceGetSamples":
                raise _fail(f"{where}.sampling_type", "only applies to nvmlDeviceGetSamples")


_STREAM_WIDTHS: Final = {
    "gpu_utilization": 2,
    "total_power": 2,
    "process_utilization": 6,
    "energy": 2,
    "power": 2,
    "memory_used": 2,
}


def _check_stream(name: str, value: object, path: str) -> None:
    previous: int | None = None
    for i, entry in enumerate(_check_list(value, path)):
        where = f"{path}[{i}]"
        row = _check_list(entry, where)
        width = _STREAM_WIDTHS.get(name, 2)
        if len(row) != width:
            raise _fail(where, f"expected {width} values, got {len(row)}")
        t = _check_int(row[0], f"{where}[0]")
        if previous is not None and t < previous:
            raise _fail(where, "timestamps must not decrease")
        previous = t
        if name == "processes":
            for j, process in enumerate(_check_list(row[1], f"{where}[1]")):
                at = f"{where}[1][{j}]"
                fields = _check_list(process, at)
                if len(fields) not in (2, 4):
                    raise _fail(at, "expected [pid, used_bytes] or [pid, used_bytes, gi, ci]")
                _check_int(fields[0], f"{at}[0]", minimum=0)
                if fields[1] is not None:
                    _check_int(fields[1], f"{at}[1]", minimum=0)
                for k in range(2, len(fields)):
                    _check_int(fields[k], f"{at}[{k}]", minimum=0)
        elif name == "process_utilization":
            for k in range(1, 6):
                _check_int(row[k], f"{where}[{k}]", minimum=0)
        elif not _is_number(row[1]) or row[1] < 0:
            raise _fail(f"{where}[1]", f"expected a non-negative number, got {row[1]!r}")


def _check_device(device: object, path: str) -> None:
    if not isinstance(device, Mapping):
        raise _fail(path, "expected an object")
    known = {"index", "name", "uuid", "memory_total", "parent", "buffer", "streams", "errors"}
    unknown = set(device) - known
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}")
    _check_int(device.get("index"), f"{path}.index", minimum=0)
    _check_str(device.get("name"), f"{path}.name")
    _check_str(device.get("uuid"), f"{path}.uuid")
    _check_int(device.get("memory_total"), f"{path}.memory_total", minimum=0)
    if device.get("parent") is not None:
        _check_int(device["parent"], f"{path}.parent", minimum=0)
    buffer = device.get("buffer", {})
    if not isinstance(buffer, Mapping):
        raise _fail(f"{path}.buffer", "expected an object")
    for key, size in buffer.items():
        if key not in SAMPLE_STREAMS:
            raise _fail(f"{path}.buffer", f"unknown stream {key!r} (known: {SAMPLE_STREAMS})")
        _check_int(size, f"{path}.buffer.{key}", minimum=1)
    streams = device.get("streams", {})
    if not isinstance(streams, Mapping):
        raise _fail(f"{path}.streams", "expected an object")
    for key, stream in streams.items():
        if key not in SAMPLE_STREAMS + STEP_STREAMS:
            known_streams = SAMPLE_STREAMS + STEP_STREAMS
            raise _fail(f"{path}.streams", f"unknown stream {key!r} (known: {known_streams})")
        _check_stream(key, stream, f"{path}.streams.{key}")
    _check_errors(device.get("errors", []), f"{path}.errors", _DEVICE_FUNCTIONS)


def _check_recording(recording: object) -> None:
    if not isinstance(recording, Mapping):
        raise _fail("", "a recording is a JSON object")
    if recording.get("format") != FORMAT:
        raise _fail("format", f"expected {FORMAT!r}, got {recording.get('format')!r}")
    known = {"format", "source", "driver_version", "init_error", "errors", "devices"}
    unknown = set(recording) - known
    if unknown:
        raise _fail("", f"unknown keys {sorted(unknown)}")
    _check_str(recording.get("source"), "source")
    _check_str(recording.get("driver_version"), "driver_version")
    if recording.get("init_error") is not None:
        _check_error_name(recording["init_error"], "init_error")
    _check_errors(recording.get("errors", []), "errors", _SYSTEM_FUNCTIONS)
    devices = _check_list(recording.get("devices"), "devices")
    uuids: set[str] = set()
    physical: set[int] = set()
    mig: set[tuple[int, int]] = set()
    for i, device in enumerate(devices):
        _check_device(device, f"devices[{i}]")
        if device["uuid"] in uuids:
            raise _fail(f"devices[{i}].uuid", f"duplicate uuid {device['uuid']!r}")
        uuids.add(device["uuid"])
        if device.get("parent") is None:
            if device["index"] in physical:
                raise _fail(f"devices[{i}].index", f"duplicate index {device['index']}")
            physical.add(device["index"])
        else:
            key = (device["parent"], device["index"])
            if key in mig:
                raise _fail(f"devices[{i}].index", f"duplicate MIG index {key[1]} on {key[0]}")
            mig.add(key)
    if physical != set(range(len(physical))):
        raise _fail("devices", f"GPU indices must be 0..{len(physical) - 1}: {sorted(physical)}")
    for i, device in enumerate(devices):
        if device.get("parent") is not None and device["parent"] not in physical:
            raise _fail(f"devices[{i}].parent", f"no GPU with index {device['parent']}")


def validate_recording(recording: object, where: str = "recording") -> None:
    """Raise ``ValueError("<where>: devices[0].streams.energy[3]: ...")`` unless well-formed."""
    try:
        _check_recording(recording)
    except _Invalid as problem:
        raise ValueError(f"{where}: {problem}") from None


def load_recording(path: str | Path) -> Recording:
    """Read and validate a recording from a JSON file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        recording = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    validate_recording(recording, str(path))
    assert isinstance(recording, dict)
    return recording


def save_recording(recording: Recording, path: str | Path) -> None:
    """Validate ``recording`` and write it as compact JSON."""
    validate_recording(recording, str(path))
    Path(path).write_text(json.dumps(recording, separators=(",", ":")) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Replay


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayHandle:
    """An opaque device handle, as ``c_nvmlDevice_t`` is for real pynvml: hashable, comparable.

    ``device`` is the device's position in the recording's ``devices`` list.
    """

    device: int
    uuid: str


@dataclasses.dataclass(frozen=True, slots=True)
class _ErrorWindow:
    function: str
    name: str
    from_us: int
    until_us: int | None
    sampling_type: int | None

    def applies(self, function: str, now_us: int, sampling_type: int | None) -> bool:
        if self.function not in ("*", function):
            return False
        if self.sampling_type is not None and self.sampling_type != sampling_type:
            return False
        return self.from_us <= now_us and (self.until_us is None or now_us < self.until_us)


@dataclasses.dataclass(slots=True)
class _Series:
    times: list[int]
    values: list[Any]

    def at(self, now_us: int) -> Any:
        """Step semantics: the last reading at or before ``now_us``, else the first reading."""
        position = bisect.bisect_right(self.times, now_us)
        return self.values[max(position - 1, 0)]

    def window(self, now_us: int, depth: int, after_us: int) -> range:
        """Positions a ``depth``-deep ring buffer holds at ``now_us``, newer than ``after_us``."""
        end = bisect.bisect_right(self.times, now_us)
        start = max(0, end - depth)
        return range(max(start, bisect.bisect_right(self.times, after_us, start, end)), end)


@dataclasses.dataclass(slots=True)
class _Device:
    position: int
    index: int
    name: str
    uuid: str
    memory_total: int
    parent: int | None
    buffer: dict[str, int]
    streams: dict[str, _Series]
    errors: list[_ErrorWindow]


def _windows(entries: Sequence[Mapping[str, Any]]) -> list[_ErrorWindow]:
    return [
        _ErrorWindow(
            entry["function"],
            entry["error"],
            entry["from_us"],
            entry.get("until_us"),
            entry.get("sampling_type"),
        )
        for entry in entries
    ]


class ReplayNvml:
    """Plays a recording back through ``pynvml``'s names, signatures, types and errors.

    ``clock_ns`` returns the current Unix time in ns; ``origin_ns`` (default: ``clock_ns()`` now)
    is the Unix time the recording's ``t = 0`` maps to. The recording's "now" is
    ``(clock_ns() - origin_ns) // 1000`` µs. Sample timestamps handed out, and the
    ``lastSeenTimeStamp`` arguments taken in, are absolute (``origin_ns // 1000 + t_us``), as NVML's
    CPU timestamps are. Samples stamped after "now" have not happened yet.

    ``calls`` counts every call by function name (failed calls included).
    """

    # The constants and error classes used by the meter, typed; the rest of pynvml's ``NVML_*``
    # integers and ``NVMLError_*`` classes are copied onto the class below.
    NVML_SUCCESS: int = pynvml.NVML_SUCCESS
    NVML_GPU_UTILIZATION_SAMPLES: int = pynvml.NVML_GPU_UTILIZATION_SAMPLES
    NVML_TOTAL_POWER_SAMPLES: int = pynvml.NVML_TOTAL_POWER_SAMPLES
    NVML_VALUE_TYPE_UNSIGNED_INT: int = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    NVMLError: Any = pynvml.NVMLError
    NVMLError_Uninitialized: Any = pynvml.NVMLError_Uninitialized
    NVMLError_InvalidArgument: Any = pynvml.NVMLError_InvalidArgument
    NVMLError_NotSupported: Any = pynvml.NVMLError_NotSupported
    NVMLError_NoPermission: Any = pynvml.NVMLError_NoPermission
    NVMLError_NotFound: Any = pynvml.NVMLError_NotFound
    NVMLError_DriverNotLoaded: Any = pynvml.NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound: Any = pynvml.NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound: Any = pynvml.NVMLError_FunctionNotFound
    NVMLError_GpuIsLost: Any = pynvml.NVMLError_GpuIsLost
    NVMLError_Unknown: Any = pynvml.NVMLError_Unknown
    NVMLLibraryMismatchError: Any = pynvml.NVMLLibraryMismatchError

    def __init__(
        self,
        recording: Recording,
        clock_ns: Callable[[], int],
        origin_ns: int | None = None,
    ) -> None:
        validate_recording(recording)
        self.recording: Final = recording
        self.clock_ns: Final = clock_ns
        self.origin_ns: Final = clock_ns() if origin_ns is None else origin_ns
        self.origin_us: Final = self.origin_ns // 1000
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._initialized = 0
        self._init_error: str | None = recording.get("init_error")
        self._system_errors = _windows(recording.get("errors", []))
        self._devices = [self._parse(i, device) for i, device in enumerate(recording["devices"])]
        self._by_uuid = {device.uuid: device for device in self._devices}
        self._by_index = {d.index: d for d in self._devices if d.parent is None}

    @staticmethod
    def _parse(position: int, device: Mapping[str, Any]) -> _Device:
        streams = {
            name: _Series([row[0] for row in rows], [row[1:] for row in rows])
            for name, rows in device.get("streams", {}).items()
        }
        buffer = dict.fromkeys(SAMPLE_STREAMS, DEFAULT_BUFFER)
        buffer.update(device.get("buffer", {}))
        return _Device(
            position,
            device["index"],
            device["name"],
            device["uuid"],
            device["memory_total"],
            device.get("parent"),
            buffer,
            streams,
            _windows(device.get("errors", [])),
        )

    def now_us(self) -> int:
        """The recording's current time, in µs since its start."""
        return (self.clock_ns() - self.origin_ns) // 1000

    # -- plumbing ------------------------------------------------------------------------------

    def _enter(self, function: str) -> int:
        """Count the call, require an initialised library, and return the recording's now."""
        with self._lock:
            self.calls[function] += 1
            initialized = self._initialized > 0
        if not initialized:
            raise _nvml_error("Uninitialized")
        return self.now_us()

    def _raise_windows(
        self,
        windows: Sequence[_ErrorWindow],
        function: str,
        now_us: int,
        sampling_type: int | None = None,
    ) -> None:
        """Raise the error of the window in force, if any.

        Where several apply, a missing function (``FunctionNotFound``) wins, since the library
        fails before it reaches the GPU; otherwise the window that opened last (the latest event:
        a GPU lost after a function was already unsupported fails with ``GpuIsLost``).
        """
        chosen: tuple[bool, int, int] | None = None
        for order, window in enumerate(windows):
            if window.applies(function, now_us, sampling_type):
                rank = (window.name.lower() == "functionnotfound", window.from_us, order)
                chosen = rank if chosen is None else max(chosen, rank)
        if chosen is None:
            return
        name = windows[chosen[2]].name
        if function == "nvmlDeviceGetComputeRunningProcesses" and chosen[0]:
            raise pynvml.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the "
                "NVML lib version. Either use matching pyNVML and NVML lib versions or "
                "use a versioned function such as nvmlDeviceGetComputeRunningProcesses_v2"
            )
        raise _nvml_error(name)

    def _device(
        self, handle: object, function: str, now_us: int, sampling_type: int | None = None
    ) -> _Device:
        if not isinstance(handle, ReplayHandle) or not 0 <= handle.device < len(self._devices):
            raise _nvml_error("InvalidArgument")
        device = self._devices[handle.device]
        self._raise_windows(device.errors, function, now_us, sampling_type)
        return device

    def _handle(self, device: _Device) -> ReplayHandle:
        return ReplayHandle(device.position, device.uuid)

    def _stream(self, device: _Device, name: str) -> _Series:
        series = device.streams.get(name)
        if series is None:
            raise _nvml_error("NotSupported")
        return series

    def _step(self, device: _Device, name: str, now_us: int) -> Any:
        series = self._stream(device, name)
        if not series.times:
            raise _nvml_error("NotSupported")
        return series.at(now_us)[0]

    # -- library -------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        """Initialise: raises the recording's ``init_error`` if any. Reference counted, as NVML."""
        with self._lock:
            self.calls["nvmlInit"] += 1
            if self._init_error is not None:
                raise _nvml_error(self._init_error)
            self._initialized += 1

    def nvmlShutdown(self) -> None:
        """Undo one ``nvmlInit``; ``Uninitialized`` when there is none to undo."""
        with self._lock:
            self.calls["nvmlShutdown"] += 1
            if self._initialized == 0:
                raise _nvml_error("Uninitialized")
            self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        """The driver version, as ``str`` (nvidia-ml-py decodes NVML's bytes)."""
        now = self._enter("nvmlSystemGetDriverVersion")
        self._raise_windows(self._system_errors, "nvmlSystemGetDriverVersion", now)
        return str(self.recording["driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        """The number of GPUs; MIG instances are not counted."""
        now = self._enter("nvmlDeviceGetCount")
        self._raise_windows(self._system_errors, "nvmlDeviceGetCount", now)
        return len(self._by_index)

    # -- handles -------------------------------------------------------------------------------

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ReplayHandle:
        """The GPU at ``index``; ``InvalidArgument`` where there is none."""
        now = self._enter("nvmlDeviceGetHandleByIndex")
        device = self._by_index.get(index) if _is_int(index) else None
        if device is None:
            raise _nvml_error("InvalidArgument")
        self._raise_windows(device.errors, "nvmlDeviceGetHandleByIndex", now)
        return self._handle(device)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> ReplayHandle:
        """The GPU or MIG instance with ``uuid`` (``GPU-...``/``MIG-...``); else ``NotFound``."""
        now = self._enter("nvmlDeviceGetHandleByUUID")
        key = uuid.decode() if isinstance(uuid, bytes) else uuid
        device = self._by_uuid.get(key)
        if device is None:
            raise _nvml_error("NotFound")
        self._raise_windows(device.errors, "nvmlDeviceGetHandleByUUID", now)
        return self._handle(device)

    def nvmlDeviceIsMigDeviceHandle(self, device: ReplayHandle) -> ctypes.c_uint:
        """Whether ``device`` is a MIG instance, as real pynvml answers it: a ``c_uint``.

        pynvml returns the ctypes object, not a bool: ``bool()`` and ``if`` work, ``== 1`` and
        ``is True`` do not.
        """
        now = self._enter("nvmlDeviceIsMigDeviceHandle")
        found = self._device(device, "nvmlDeviceIsMigDeviceHandle", now)
        return ctypes.c_uint(0 if found.parent is None else 1)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: ReplayHandle) -> ReplayHandle:
        """The parent GPU of a MIG instance; ``InvalidArgument`` for a handle that is not MIG."""
        now = self._enter("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        found = self._device(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", now)
        if found.parent is None:
            raise _nvml_error("InvalidArgument")
        return self._handle(self._by_index[found.parent])

    def nvmlDeviceGetMaxMigDeviceCount(self, device: ReplayHandle) -> int:
        """How many MIG instances the GPU has in the recording; ``NotSupported`` where none."""
        now = self._enter("nvmlDeviceGetMaxMigDeviceCount")
        found = self._device(device, "nvmlDeviceGetMaxMigDeviceCount", now)
        children = [d.index for d in self._devices if d.parent == found.index]
        if found.parent is not None or not children:
            raise _nvml_error("NotSupported")
        return max(children) + 1

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: ReplayHandle, index: int) -> ReplayHandle:
        """The GPU's MIG instance at ``index``; ``NotFound`` where that slot is empty."""
        now = self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        found = self._device(device, "nvmlDeviceGetMigDeviceHandleByIndex", now)
        for candidate in self._devices:
            if candidate.parent == found.index and candidate.index == index:
                return self._handle(candidate)
        raise _nvml_error("NotFound")

    # -- identity ------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: ReplayHandle) -> str:
        """The product name, as ``str``."""
        now = self._enter("nvmlDeviceGetName")
        return self._device(handle, "nvmlDeviceGetName", now).name

    def nvmlDeviceGetUUID(self, handle: ReplayHandle) -> str:
        """``GPU-...`` (or ``MIG-...``), as ``str``."""
        now = self._enter("nvmlDeviceGetUUID")
        return self._device(handle, "nvmlDeviceGetUUID", now).uuid

    def nvmlDeviceGetIndex(self, handle: ReplayHandle) -> int:
        """The NVML index (for a MIG instance: the recorded value, its index within the parent)."""
        now = self._enter("nvmlDeviceGetIndex")
        return self._device(handle, "nvmlDeviceGetIndex", now).index

    # -- readings ------------------------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle: ReplayHandle, version: int | None = None) -> Any:
        """A real ``c_nvmlMemory_t`` (``c_nvmlMemory_v2_t`` with ``version``), in bytes."""
        now = self._enter("nvmlDeviceGetMemoryInfo")
        device = self._device(handle, "nvmlDeviceGetMemoryInfo", now)
        used = int(self._step(device, "memory_used", now))
        free = max(device.memory_total - used, 0)
        if not version:
            return pynvml.c_nvmlMemory_t(total=device.memory_total, free=free, used=used)
        memory = pynvml.c_nvmlMemory_v2_t(total=device.memory_total, free=free, used=used)
        memory.version = version
        return memory

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: ReplayHandle) -> int:
        """Millijoules since the driver loaded; moves only when the driver updates it."""
        now = self._enter("nvmlDeviceGetTotalEnergyConsumption")
        device = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption", now)
        return int(self._step(device, "energy", now))

    def nvmlDeviceGetPowerUsage(self, handle: ReplayHandle) -> int:
        """The driver's current power reading, in milliwatts."""
        now = self._enter("nvmlDeviceGetPowerUsage")
        device = self._device(handle, "nvmlDeviceGetPowerUsage", now)
        return int(self._step(device, "power", now))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: ReplayHandle) -> list[Any]:
        """pynvml's friendly objects (``pid``, ``usedGpuMemory`` bytes or None, instance ids).

        As in pynvml, a missing function surfaces as ``NVMLLibraryMismatchError`` (the
        unversioned wrapper's translation of ``FunctionNotFound``), not as an ``NVMLError``.
        """
        now = self._enter("nvmlDeviceGetComputeRunningProcesses")
        device = self._device(handle, "nvmlDeviceGetComputeRunningProcesses", now)
        listed = self._step(device, "processes", now)
        processes = []
        for entry in listed:
            gi, ci = entry[2:4] if len(entry) == 4 else (_NOT_AVAILABLE_UINT, _NOT_AVAILABLE_UINT)
            info = pynvml.c_nvmlProcessInfo_v3_t(
                pid=entry[0], usedGpuMemory=0, gpuInstanceId=gi, computeInstanceId=ci
            )
            friendly = pynvml.nvmlStructToFriendlyObject(info)
            friendly.usedGpuMemory = entry[1]
            processes.append(friendly)
        return processes

    def nvmlDeviceGetSamples(
        self,
        device: ReplayHandle,
        sampling_type: int,
        timeStamp: int,
    ) -> tuple[int, list[Any]]:
        """``(value type, [c_nvmlSample_t, ...])``: buffered samples newer than ``timeStamp``.

        The driver's ring buffer at time T holds its newest ``buffer`` samples stamped at or before
        T; of those, the ones with ``timeStamp`` > the argument come back, oldest first, the value
        in ``.sampleValue.uiVal``. ``NotFound`` when none qualify; ``NotSupported`` for a sampling
        type the recording lacks; ``InvalidArgument`` for one NVML does not define.
        """
        now = self._enter("nvmlDeviceGetSamples")
        found = self._device(device, "nvmlDeviceGetSamples", now, sampling_type)
        if not _is_int(sampling_type) or not 0 <= sampling_type < _SAMPLING_TYPE_COUNT:
            raise _nvml_error("InvalidArgument")
        name = _SAMPLING_STREAMS.get(sampling_type)
        if name is None:
            raise _nvml_error("NotSupported")
        series = self._stream(found, name)
        positions = series.window(now, found.buffer[name], timeStamp - self.origin_us)
        if not positions:
            raise _nvml_error("NotFound")
        samples = []
        for position in positions:
            sample = pynvml.c_nvmlSample_t()
            sample.timeStamp = self.origin_us + series.times[position]
            sample.sampleValue.uiVal = int(series.values[position][0])
            samples.append(sample)
        return int(pynvml.NVML_VALUE_TYPE_UNSIGNED_INT), samples

    def nvmlDeviceGetProcessUtilization(
        self,
        handle: ReplayHandle,
        timeStamp: int,
    ) -> list[Any]:
        """One ``c_nvmlProcessUtilizationSample_t`` per process with a sample after ``timeStamp``.

        Each entry aggregates (rounded mean) that process's buffered samples newer than the
        cursor and carries the newest one's timestamp; entries are in order of first appearance.
        ``NotFound`` when no process has a newer sample.
        """
        now = self._enter("nvmlDeviceGetProcessUtilization")
        device = self._device(handle, "nvmlDeviceGetProcessUtilization", now)
        series = self._stream(device, "process_utilization")
        positions = series.window(
            now, device.buffer["process_utilization"], timeStamp - self.origin_us
        )
        if not positions:
            raise _nvml_error("NotFound")
        grouped: dict[int, list[int]] = {}
        for position in positions:
            grouped.setdefault(series.values[position][0], []).append(position)
        samples = []
        for pid, members in grouped.items():
            count = len(members)
            means = [
                (sum(series.values[p][k] for p in members) + count // 2) // count
                for k in range(1, 5)
            ]
            samples.append(
                pynvml.c_nvmlProcessUtilizationSample_t(
                    pid=pid,
                    timeStamp=self.origin_us + series.times[members[-1]],
                    smUtil=means[0],
                    memUtil=means[1],
                    encUtil=means[2],
                    decUtil=means[3],
                )
            )
        return samples


def _copy_pynvml_names() -> None:
    """Give ReplayNvml every ``NVML_*`` integer constant and ``NVMLError*`` class pynvml has."""
    for name in dir(pynvml):
        if hasattr(ReplayNvml, name):
            continue
        value = getattr(pynvml, name)
        if name.startswith("NVMLError") or (name.startswith("NVML_") and _is_int(value)):
            setattr(ReplayNvml, name, value)


_copy_pynvml_names()


# --------------------------------------------------------------------------------------------
# Synthetic recordings

Interval = tuple[float, float, float]
"""``(start_s, end_s, fraction)``: the GPU is busy ``fraction`` of the time in [start, end)."""


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _busy_us(intervals: Sequence[tuple[int, int, float]], start: int, end: int) -> float:
    """Kernel-busy microseconds in [start, end)."""
    return sum(max(0, min(end, b) - max(start, a)) * f for a, b, f in intervals)


def _intervals(busy: Sequence[Interval], where: str) -> list[tuple[int, int, float]]:
    result = sorted((_us(a), _us(b), float(f)) for a, b, f in busy)
    for i, (a, b, f) in enumerate(result):
        if not a < b or not 0.0 <= f <= 1.0:
            raise ValueError(f"{where}: need start < end and 0 <= fraction <= 1: {busy}")
        if i and a < result[i - 1][1]:
            raise ValueError(f"{where}: intervals overlap: {busy}")
    return result


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _per_device(value: Any, device: int) -> Any:
    if isinstance(value, Mapping):
        return value.get(device, ())
    return value


def synthetic_recording(
    *,
    duration_s: float = 10.0,
    busy: Sequence[Interval] | Mapping[int, Sequence[Interval]] = (),
    idle_power_w: float = 70.0,
    busy_power_w: float = 700.0,
    pid: int = 4242,
    memory_bytes: Sequence[tuple[float, int]] = ((0.0, 4 * _GIB),),
    name: str = "NVIDIA H100 80GB HBM3",
    uuid: str | Sequence[str] | None = None,
    devices: int = 1,
    energy_supported: bool = True,
    buffer_samples: int = 120,
    sample_period_us: int = 166_667,
    energy_update_us: int = 100_000,
    energy_start_mj: int = 1_234_567_890,
    memory_total: int = 85_520_809_984,
    driver_version: str = "550.54.15",
    errors: Sequence[Mapping[str, Any]] | Mapping[int, Sequence[Mapping[str, Any]]] = (),
) -> Recording:
    """A recording of a described workload, following NVML's documented sampling.

    Per device (``busy``/``errors`` may be dicts keyed by device index; otherwise every device
    gets the same):

    * ``gpu_utilization``: a sample at every ``k * sample_period_us`` (k >= 1, up to the
      duration) whose value is the percent of the preceding period ``(t - period, t]`` with a
      kernel running, ``floor(x + 0.5)``. ``busy=[(0, 2, 1.0)]`` at 1/6 s gives 12 samples of 100
      (the 12th period ends 4 µs after 2 s and rounds to 100), then 0s.
    * ``total_power`` and ``power``: at the same instants, the period's mean power in mW,
      ``idle + (busy - idle) * utilisation``; ``power`` also has a reading at t = 0.
    * ``energy``: a reading every ``energy_update_us`` from t = 0: ``energy_start_mj`` plus the
      floor of the power integral so far, in mJ.
    * ``process_utilization``: for every utilisation sample > 0,
      ``[t, pid, util, util // 2, 0, 0]``.
    * ``processes`` and ``memory_used``: at each ``memory_bytes`` step, ``[[pid, bytes]]`` (empty
      when bytes is 0) and ``bytes + 500 MiB`` of driver overhead.
    """
    if devices < 1:
        raise ValueError("devices must be >= 1")
    end_us = _us(duration_s)
    period = sample_period_us
    watts_span = busy_power_w - idle_power_w
    described = []
    for index in range(devices):
        intervals = _intervals(_per_device(busy, index), f"busy[{index}]")
        utilization: list[list[int]] = []
        total_power: list[list[int]] = []
        process_util: list[list[int]] = []
        power = [
            [0, _round_half_up(1000 * (idle_power_w + watts_span * _busy_us(intervals, 0, 1)))]
        ]
        for k in range(1, end_us // period + 1):
            t = k * period
            share = _busy_us(intervals, t - period, t) / period
            percent = _round_half_up(100 * share)
            milliwatts = _round_half_up(1000 * (idle_power_w + watts_span * share))
            utilization.append([t, percent])
            total_power.append([t, milliwatts])
            power.append([t, milliwatts])
            if percent > 0:
                process_util.append([t, pid, percent, percent // 2, 0, 0])
        energy = [
            [
                t,
                energy_start_mj
                + math.floor((idle_power_w * t + watts_span * _busy_us(intervals, 0, t)) / 1000),
            ]
            for t in range(0, end_us + 1, energy_update_us)
        ]
        steps = sorted((_us(t), int(b)) for t, b in memory_bytes)
        streams: dict[str, Any] = {
            "gpu_utilization": utilization,
            "total_power": total_power,
            "process_utilization": process_util,
            "power": power,
            "memory_used": [[t, b + DRIVER_OVERHEAD_BYTES] for t, b in steps],
            "processes": [[t, [[pid, b]] if b else []] for t, b in steps],
        }
        device_errors = [dict(entry) for entry in _per_device(errors, index)]
        if energy_supported:
            streams["energy"] = energy
        else:
            device_errors.append(
                {
                    "function": "nvmlDeviceGetTotalEnergyConsumption",
                    "error": "NotSupported",
                    "from_us": _FOREVER_AGO_US,
                    "until_us": None,
                }
            )
        if isinstance(uuid, str) or uuid is None:
            base = uuid or "GPU-5f0e2c1a-7b3d-4e8f-9a60-1c2d3e4f"
            device_uuid = base if index == 0 and uuid else f"{base}{index:04x}"
        else:
            device_uuid = uuid[index]
        described.append(
            {
                "index": index,
                "name": name,
                "uuid": device_uuid,
                "memory_total": memory_total,
                "parent": None,
                "buffer": dict.fromkeys(SAMPLE_STREAMS, buffer_samples),
                "streams": streams,
                "errors": device_errors,
            }
        )
    busy_text = busy if not isinstance(busy, Mapping) else dict(busy)
    recording: Recording = {
        "format": FORMAT,
        "source": f"synthetic: {duration_s} s, busy {busy_text}, {devices} device(s)",
        "driver_version": driver_version,
        "init_error": None,
        "devices": described,
    }
    validate_recording(recording, "synthetic_recording")
    return recording


def energy_reset(recording: Recording, device: int, at_s: float) -> Recording:
    """A copy where the driver reloaded at ``at_s``: the energy counter restarts from 0 there.

    ``device`` is the position in ``recording["devices"]``. Readings after ``at_s`` continue with
    the same increments from the new zero.
    """
    result = copy.deepcopy(recording)
    rows = result["devices"][device]["streams"]["energy"]
    at_us = _us(at_s)
    before = [row for row in rows if row[0] < at_us]
    after = [row for row in rows if row[0] > at_us]
    base = ([row for row in rows if row[0] <= at_us] or rows[:1])[-1][1]
    result["devices"][device]["streams"]["energy"] = [
        *before,
        [at_us, 0],
        *([t, value - base] for t, value in after),
    ]
    validate_recording(result, "energy_reset")
    return result


def gpu_lost(recording: Recording, device: int, from_s: float) -> Recording:
    """A copy where every call on ``device`` (a position) raises ``GpuIsLost`` from ``from_s``."""
    result = copy.deepcopy(recording)
    result["devices"][device].setdefault("errors", []).append(
        {"function": "*", "error": "GpuIsLost", "from_us": _us(from_s), "until_us": None}
    )
    validate_recording(result, "gpu_lost")
    return result


# --------------------------------------------------------------------------------------------
# Recorder

_VALUE_FIELDS: Final = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}


class _ErrorLog:
    """Open/close error windows per (function, sampling type) as calls fail and recover."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self._open: dict[tuple[str, int | None], dict[str, Any]] = {}

    def observe(
        self, function: str, error: str | None, t_us: int, sampling_type: int | None = None
    ) -> None:
        key = (function, sampling_type)
        current = self._open.get(key)
        if current is not None and current["error"] == error:
            return
        if current is not None:
            current["until_us"] = max(t_us, current["from_us"] + 1)
            del self._open[key]
        if error is not None:
            entry: dict[str, Any] = {
                "function": function,
                "error": error,
                "from_us": t_us,
                "until_us": None,
            }
            if sampling_type is not None:
                entry["sampling_type"] = sampling_type
            self.entries.append(entry)
            self._open[key] = entry


class _DeviceRecorder:
    """One device's recording in progress."""

    def __init__(self, nvml: Any, handle: Any, entry: dict[str, Any], origin_us: int) -> None:
        self.nvml = nvml
        self.handle = handle
        self.entry = entry
        self.origin_us = origin_us
        self.errors = _ErrorLog(entry["errors"])
        self.streams: dict[str, list[Any]] = {}
        self.cursors: dict[str, int] = {}
        self.largest_read: dict[str, int] = {}

    def call(
        self, t_us: int, function: str, *args: Any, sampling_type: int | None = None
    ) -> tuple[bool, Any]:
        """Call ``function``; on an NVML failure note it and return ``(False, error name)``."""
        try:
            result = getattr(self.nvml, function)(self.handle, *args)
        except Exception as error:
            name = _error_name(error)
            if name is None:
                raise
            if getattr(error, "value", None) == pynvml.NVML_SUCCESS:
                # pynvml's nvmlDeviceGetProcessUtilization raises NVMLError(NVML_SUCCESS) when
                # the sizing call succeeds with nothing to size: no samples, like NotFound.
                name = "NotFound"
            if name == "NotFound" and function in (
                "nvmlDeviceGetSamples",
                "nvmlDeviceGetProcessUtilization",
            ):
                self.errors.observe(function, None, t_us, sampling_type)
                return False, name  # no new samples: not a failure
            self.errors.observe(function, name, t_us, sampling_type)
            return False, name
        self.errors.observe(function, None, t_us, sampling_type)
        return True, result

    def step(self, stream: str, t_us: int, value: Any) -> None:
        rows = self.streams.setdefault(stream, [])
        if not rows or rows[-1][1] != value:
            rows.append([t_us, value])

    def poll(self, t_us: int) -> None:
        if self.handle is None:
            return  # no handle: the errors entry says why
        for sampling_type, stream in _SAMPLING_STREAMS.items():
            self._drain_samples(t_us, sampling_type, stream)
        self._drain_processes(t_us)
        ok, value = self.call(t_us, "nvmlDeviceGetTotalEnergyConsumption")
        if ok:
            self.step("energy", t_us, int(value))
        ok, value = self.call(t_us, "nvmlDeviceGetPowerUsage")
        if ok:
            self.step("power", t_us, int(value))
        ok, value = self.call(t_us, "nvmlDeviceGetMemoryInfo")
        if ok:
            if not self.entry["memory_total"]:
                self.entry["memory_total"] = int(value.total)
            self.step("memory_used", t_us, int(value.used))
        ok, value = self.call(t_us, "nvmlDeviceGetComputeRunningProcesses")
        if ok:
            listed = []
            for process in value:
                used = process.usedGpuMemory
                row = [int(process.pid), None if used is None else int(used)]
                ids = [
                    getattr(process, "gpuInstanceId", _NOT_AVAILABLE_UINT),
                    getattr(process, "computeInstanceId", _NOT_AVAILABLE_UINT),
                ]
                if any(i is not None and i != _NOT_AVAILABLE_UINT for i in ids):
                    row.extend(int(i or 0) for i in ids)
                listed.append(row)
            self.step("processes", t_us, listed)

    def _drain_samples(self, t_us: int, sampling_type: int, stream: str) -> None:
        cursor = self.cursors.get(stream, 0)
        ok, result = self.call(
            t_us, "nvmlDeviceGetSamples", sampling_type, cursor, sampling_type=sampling_type
        )
        if not ok:
            if result == "NotFound":
                self.streams.setdefault(stream, [])
            return
        value_type, samples = result
        field = _VALUE_FIELDS.get(int(value_type), "uiVal")
        rows = self.streams.setdefault(stream, [])
        fresh = [s for s in samples if int(s.timeStamp) > cursor]
        for sample in fresh:
            value = getattr(sample.sampleValue, field)
            rows.append([int(sample.timeStamp) - self.origin_us, value])
        if fresh:
            self.cursors[stream] = max(int(s.timeStamp) for s in fresh)
        self.largest_read[stream] = max(self.largest_read.get(stream, 0), len(samples))

    def _drain_processes(self, t_us: int) -> None:
        stream = "process_utilization"
        cursor = self.cursors.get(stream, 0)
        ok, result = self.call(t_us, "nvmlDeviceGetProcessUtilization", cursor)
        if not ok:
            if result == "NotFound":
                self.streams.setdefault(stream, [])
            return
        rows = self.streams.setdefault(stream, [])
        fresh = sorted(
            (s for s in result if int(s.timeStamp) > cursor), key=lambda s: int(s.timeStamp)
        )
        for s in fresh:
            utils = [int(s.smUtil), int(s.memUtil), int(s.encUtil), int(s.decUtil)]
            rows.append([int(s.timeStamp) - self.origin_us, int(s.pid), *utils])
        if fresh:
            self.cursors[stream] = int(fresh[-1].timeStamp)
        self.largest_read[stream] = max(self.largest_read.get(stream, 0), len(result))

    def finish(self) -> dict[str, Any]:
        for stream in SAMPLE_STREAMS:
            rows = self.streams.get(stream)
            if rows is not None:
                rows.sort(key=lambda row: row[0])
                self.entry["buffer"][stream] = max(DEFAULT_BUFFER, self.largest_read.get(stream, 0))
        self.entry["streams"] = self.streams
        return self.entry


def _static(
    recorder: _DeviceRecorder,
    t_us: int,
    function: str,
    fallback: Any,
    convert: Callable[[Any], Any],
) -> Any:
    ok, value = recorder.call(t_us, function)
    return convert(value) if ok else fallback


def record_nvml(
    nvml: Any,
    *,
    seconds: float,
    rate_hz: float = 20.0,
    clock_ns: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], object] = time.sleep,
) -> Recording:
    """Record what ``nvml`` (the ``pynvml`` module, or a :class:`ReplayNvml`) does for ``seconds``.

    At ``rate_hz`` it drains every device's ``nvmlDeviceGetSamples`` (utilisation, power) and
    ``nvmlDeviceGetProcessUtilization`` with timestamp cursors, so each driver sample is captured
    once (including those already buffered at the start, which get negative times), and reads
    energy, power, memory and running processes, keeping a reading only when it changed. Each
    NVML failure opens an errors window for that function from the time it was first seen, closed
    when a later call succeeds. MIG instances are discovered through
    ``nvmlDeviceGetMaxMigDeviceCount`` and ``nvmlDeviceGetMigDeviceHandleByIndex`` where
    available. Polled faster than the driver's sample period, replaying the result gives back the
    same sample streams.
    """
    origin_ns = clock_ns()
    origin_us = origin_ns // 1000

    def now_us() -> int:
        return (clock_ns() - origin_ns) // 1000

    stamp = datetime.datetime.fromtimestamp(origin_ns / 1e9, tz=datetime.UTC)
    recording: Recording = {
        "format": FORMAT,
        "source": f"recorded: {socket.gethostname()}, {stamp.isoformat(timespec='seconds')}",
        "driver_version": "",
        "init_error": None,
        "errors": [],
        "devices": [],
    }
    try:
        nvml.nvmlInit()
    except Exception as error:
        name = _error_name(error)
        if name is None:
            raise
        recording["init_error"] = name
        return recording
    system_errors = _ErrorLog(recording["errors"])
    try:
        recorders = _discover(nvml, recording, system_errors, origin_us, now_us)
        period_ns = 1e9 / rate_hz
        deadline_ns = origin_ns + round(seconds * 1e9)
        tick = 0
        while True:
            for recorder in recorders:
                recorder.poll(now_us())
            now = clock_ns()
            if now >= deadline_ns:
                break
            tick += 1
            next_ns = min(origin_ns + round(tick * period_ns), deadline_ns)
            if next_ns > now:
                sleep((next_ns - now) / 1e9)
        recording["devices"] = [recorder.finish() for recorder in recorders]
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as error:
            if _error_name(error) is None:
                raise
    validate_recording(recording, "record_nvml")
    return recording


def _discover(
    nvml: Any,
    recording: Recording,
    system_errors: _ErrorLog,
    origin_us: int,
    now_us: Callable[[], int],
) -> list[_DeviceRecorder]:
    """Read the driver version and every GPU's and MIG instance's identity."""
    t = now_us()
    try:
        recording["driver_version"] = str(nvml.nvmlSystemGetDriverVersion())
    except Exception as error:
        name = _error_name(error)
        if name is None:
            raise
        system_errors.observe("nvmlSystemGetDriverVersion", name, t)
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as error:
        name = _error_name(error)
        if name is None:
            raise
        system_errors.observe("nvmlDeviceGetCount", name, t)
        return []
    recorders: list[_DeviceRecorder] = []
    for index in range(count):
        entry = _blank_device(index, None)
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as error:
            name = _error_name(error)
            if name is None:
                raise
            entry["errors"].append({"function": "*", "error": name, "from_us": t, "until_us": None})
            recorders.append(_DeviceRecorder(nvml, None, entry, origin_us))
            continue
        recorder = _identify(nvml, handle, entry, origin_us, t)
        recorders.append(recorder)
        recorders.extend(_mig_children(nvml, handle, index, origin_us, t))
    return recorders


def _blank_device(index: int, parent: int | None) -> dict[str, Any]:
    prefix = "GPU" if parent is None else f"MIG-{parent}"
    return {
        "index": index,
        "name": "",
        "uuid": f"{prefix}-unknown-{index}",
        "memory_total": 0,
        "parent": parent,
        "buffer": {},
        "streams": {},
        "errors": [],
    }


def _identify(
    nvml: Any, handle: Any, entry: dict[str, Any], origin_us: int, t: int
) -> _DeviceRecorder:
    recorder = _DeviceRecorder(nvml, handle, entry, origin_us)
    entry["name"] = _static(recorder, t, "nvmlDeviceGetName", "", str)
    entry["uuid"] = _static(recorder, t, "nvmlDeviceGetUUID", entry["uuid"], str)
    if entry["parent"] is None:
        entry["index"] = _static(recorder, t, "nvmlDeviceGetIndex", entry["index"], int)
    else:
        recorder.call(t, "nvmlDeviceGetIndex")  # a MIG instance keeps its index in the parent
    memory = _static(recorder, t, "nvmlDeviceGetMemoryInfo", None, lambda value: value)
    if memory is not None:
        entry["memory_total"] = int(memory.total)
    return recorder


def _mig_children(
    nvml: Any, handle: Any, parent: int, origin_us: int, t: int
) -> list[_DeviceRecorder]:
    try:
        slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception as error:
        if _error_name(error) is None:
            raise
        return []
    children = []
    for slot in range(slots):
        try:
            child = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception as error:
            if _error_name(error) is None:
                raise
            continue
        children.append(_identify(nvml, child, _blank_device(slot, parent), origin_us, t))
    return children
