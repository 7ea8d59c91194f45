"""TensorRT engine cache: key, storage next to the ONNX file, validation, rebuild. No TensorRT import.

An engine is only valid for the ONNX file, TensorRT version, GPU model and compute capability,
precision and input profile it was built for (and, in int8, its calibration images). These make
up the :class:`EngineKey`. The cache keeps one engine per ONNX file, precision and batch
profile, ``<onnx stem>.<precision>.b<batch>.engine`` (:func:`engine_file_name`), beside the ONNX
file or at an explicit path, with a JSON sidecar (``….engine.json``) holding the key, the
engine's sha256 and its I/O tensors.

:meth:`EngineCache.load_or_build` uses the cached engine when the key matches, the file is
intact, TensorRT deserialises it and its I/O tensors match the ONNX graph's; otherwise it logs
why (cached vs current) and rebuilds. Loading only reads: an engine in a read-only folder (a
vehicle image) loads; only a build creates the folder and takes the build lock, and a build
into a folder that cannot be written fails with a message saying how to pre-build. The TensorRT
calls (build, deserialise, describe I/O) come in as functions, so all of this is testable
without TensorRT.
"""

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import PRECISIONS

__all__ = ["PRECISIONS", "InputProfile", "EngineKey", "EngineCache", "EngineNotBuildable", "onnx_io",
           "compare_io", "images_sha256", "engine_file_name", "write_atomic"]

log = logging.getLogger(__name__)


#: {tensor name: {"mode": "input" | "output", "shape": [...], "dtype": "uint8"}}; −1 = dynamic
IODescription = Dict[str, Dict[str, object]]


@dataclass(frozen=True)
class InputProfile:
    """Min / opt / max shape of one input (TensorRT optimisation profile)."""

    name: str
    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]

    def __post_init__(self):
        for attr in ("min", "opt", "max"):
            object.__setattr__(self, attr, tuple(int(v) for v in getattr(self, attr)))
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError(f"profile of {self.name!r}: min/opt/max ranks differ: "
                             f"{self.min}, {self.opt}, {self.max}")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError(f"profile of {self.name!r}: need min <= opt <= max in every "
                             f"dimension, got {self.min}, {self.opt}, {self.max}")

    @classmethod
    def for_batches(cls, name: str, frame_shape: Sequence[int], min_batch: int, opt_batch: int,
                    max_batch: int) -> "InputProfile":
        """A profile whose only free dimension is the batch (the first)."""
        frame = tuple(frame_shape)
        return cls(name, (min_batch,) + frame, (opt_batch,) + frame, (max_batch,) + frame)


def batch_tag(low: int, opt: int, high: int) -> str:
    """``b1`` (static batch 1) or ``b1-4-8`` (batch min-opt-max), for file names."""
    return f"b{low}" if low == opt == high else f"b{low}-{opt}-{high}"


def engine_file_name(onnx_path, precision: str, batch: Sequence[int]) -> str:
    """``<onnx stem>.<precision>.<batch tag>.engine``: the one name every command resolves."""
    return f"{Path(onnx_path).stem}.{precision}.{batch_tag(*batch)}.engine"


class EngineNotBuildable(RuntimeError):
    """No usable engine is cached and none can be built here (read-only folder, no calibration)."""


def _profile_text(profile: Sequence[InputProfile]) -> str:
    return "; ".join(f"{p.name} {p.min}/{p.opt}/{p.max}" for p in profile)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; any difference means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"
    precision: str  # fp32 | fp16 | int8
    profile: Tuple[InputProfile, ...]
    #: int8 only: the calibration images (see images_sha256). None in a key used only to load:
    #: any calibration of a cached int8 engine is accepted (its folder is not needed then)
    calibration_sha256: Optional[str] = ""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        object.__setattr__(self, "profile", tuple(self.profile))

    def batch_range(self) -> Tuple[int, int, int]:
        """The profile's (min, opt, max) batch ((1, 1, 1) without a profile)."""
        batches = {(p.min[0], p.opt[0], p.max[0]) for p in self.profile} or {(1, 1, 1)}
        return max(batches)

    def to_json(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, object]) -> "EngineKey":
        profile = tuple(InputProfile(**p) for p in data["profile"])
        return cls(**{**data, "profile": profile})

    def differences(self, current: "EngineKey") -> List[str]:
        """``field: cached X vs current Y`` for every field that differs (self is the cached key)."""
        out = []
        for name in self.__dataclass_fields__:
            old, new = getattr(self, name), getattr(current, name)
            if name == "calibration_sha256" and new is None:
                continue  # loading without the calibration images: any calibration will do
            if old != new:
                if name == "profile":
                    old, new = _profile_text(old), _profile_text(new)
                out.append(f"{name}: cached {old or '(none)'} vs current {new or '(none)'}")
        return out


def onnx_io(onnx_path) -> IODescription:
    """The graph's inputs and outputs as an :data:`IODescription` (symbolic dims as −1)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    io = {}
    for mode, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            io[value.name] = {"mode": mode, "shape": shape, "dtype": dtype}
    return io


def compare_io(expected: IODescription, actual: IODescription) -> List[str]:
    """Mismatches in tensor names, directions and shapes (dtypes are TensorRT's to choose)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"tensor {name!r}: in the ONNX graph, not in the engine")
        elif name not in expected:
            problems.append(f"tensor {name!r}: in the engine, not in the ONNX graph")
        else:
            want, got = expected[name], actual[name]
            if want["mode"] != got["mode"]:
                problems.append(f"tensor {name!r}: engine {got['mode']} vs ONNX {want['mode']}")
            if list(want["shape"]) != list(got["shape"]):
                problems.append(f"tensor {name!r} shape: engine {list(got['shape'])} vs ONNX "
                                f"{list(want['shape'])}")
    return problems


def images_sha256(paths: Sequence[Path]) -> str:
    """Digest of a calibration set: file names and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock while building, so that two nodes starting together build once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


@dataclass
class EngineCache:
    """The cached engine of one ONNX file for one key.

    The engine goes to ``engine_path`` when given, else into ``cache_dir`` (default: the ONNX
    file's folder) under :func:`engine_file_name`.
    """

    onnx_path: Path
    key: EngineKey
    cache_dir: Optional[Path] = None
    #: given, or resolved in __post_init__ (None in the constructor means "the default name")
    engine_path: Path = None  # type: ignore[assignment]
    meta_path: Path = field(init=False)

    def __post_init__(self):
        self.onnx_path = Path(self.onnx_path)
        if self.engine_path is None:
            folder = Path(self.cache_dir) if self.cache_dir is not None else self.onnx_path.parent
            self.engine_path = folder / engine_file_name(self.onnx_path, self.key.precision, self.key.batch_range())
        self.engine_path = Path(self.engine_path)
        self.meta_path = self.engine_path.with_name(self.engine_path.name + ".json")

    def stale_reason(self) -> Optional[str]:
        """Why the cached files cannot be used as they are (None: they can be tried)."""
        if not self.engine_path.is_file():
            return "no cached engine"
        if not self.meta_path.is_file():
            return f"{self.meta_path.name} is missing"
        try:
            meta = json.loads(self.meta_path.read_text())
            cached = EngineKey.from_json(meta["key"])
            engine_sha256 = meta["engine_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{self.meta_path.name} is unreadable ({exc})"
        differences = cached.differences(self.key)
        if differences:
            return "; ".join(differences)
        if _sha256_bytes(self.engine_path.read_bytes()) != engine_sha256:
            return "engine file is corrupt (sha256 differs from the one recorded at build time)"
        return None

    def write(self, engine: bytes, io: IODescription, build_seconds: float) -> None:
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.engine_path, engine)
        meta = {"key": self.key.to_json(), "engine_sha256": _sha256_bytes(engine), "io": io,
                "onnx_file": self.onnx_path.name, "build_seconds": round(build_seconds, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(self.meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())

    def _try_cached(self, deserialize, describe_io, expected_io):
        """(engine, None) if the cached engine is usable, else (None, reason). Reads only."""
        reason = self.stale_reason()
        if reason is not None:
            return None, reason
        try:
            engine = deserialize(self.engine_path.read_bytes())
        except Exception as exc:  # a corrupt plan can raise anything from the runtime
            return None, f"TensorRT failed to deserialise it ({type(exc).__name__}: {exc})"
        if engine is None:
            return None, "TensorRT could not deserialise it"
        problems = compare_io(expected_io, describe_io(engine))
        if problems:
            return None, "I/O differs from the ONNX graph: " + "; ".join(problems)
        return engine, None

    def _file_state(self):
        try:
            stat = self.engine_path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _check_writable(self, reason: str) -> None:
        """Refuse a build that could not be stored, before spending minutes on it."""
        folder = self.engine_path.parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise EngineNotBuildable(
                f"TensorRT engine {self.engine_path} needs a build ({reason}), but {existing} is not "
                "writable: build it where it may be written (rpl-perception build-engine with the "
                "same settings, then copy the .engine and .engine.json files) or point cache_dir / "
                "engine_path at a writable folder")

    def load_or_build(self, build: Callable[[], bytes], deserialize: Callable[[bytes], Any],
                      describe_io: Callable[[Any], IODescription],
                      expected_io: Optional[IODescription] = None, *, force: bool = False,
                      can_build: Optional[str] = None):
        """→ ``(engine, built)``: the cached engine if valid, else a fresh build (stored).

        ``build()`` returns serialized engine bytes, ``deserialize(bytes)`` an engine (None or
        an exception on failure), ``describe_io(engine)`` its :data:`IODescription`, which must
        match ``expected_io`` (default: the ONNX graph's). ``force`` rebuilds regardless.
        ``can_build``: a reason why no build is possible here (e.g. int8 without calibration
        images), raised as :class:`EngineNotBuildable` when the cached engine is not usable.
        A valid cached engine is loaded without writing anything.
        """
        expected_io = onnx_io(self.onnx_path) if expected_io is None else expected_io
        reason = "rebuild forced"
        seen = self._file_state()
        if not force:
            engine, reason = self._try_cached(deserialize, describe_io, expected_io)
            if engine is not None:
                log.info("using cached TensorRT engine %s", self.engine_path)
                return engine, False
        if can_build is not None:
            raise EngineNotBuildable(f"TensorRT engine {self.engine_path} needs a build ({reason}), "
                                     f"which is not possible here: {can_build}")
        self._check_writable(reason)
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.engine_path.with_name(self.engine_path.name + ".lock")
        with _exclusive(lock):
            if not force and self._file_state() != seen:  # another process built it meanwhile
                engine, reason = self._try_cached(deserialize, describe_io, expected_io)
                if engine is not None:
                    log.info("using TensorRT engine %s (built by another process)", self.engine_path)
                    return engine, False
            log_level = logging.INFO if reason in ("no cached engine", "rebuild forced") else logging.WARNING
            log.log(log_level, "building TensorRT engine %s: %s (this takes minutes; "
                    "'rpl-perception build-engine' prepares it ahead)", self.engine_path, reason)
            started = time.perf_counter()
            data = bytes(build())
            seconds = time.perf_counter() - started
            engine = deserialize(data)
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise the engine it just built for "
                                   f"{self.onnx_path}")
            io = describe_io(engine)
            problems = compare_io(expected_io, io)
            if problems:  # a fresh build that disagrees with its ONNX: rebuilding would loop
                raise RuntimeError(f"the engine built from {self.onnx_path} does not match its "
                                   "I/O: " + "; ".join(problems))
            self.write(data, io, seconds)
            log.info("built %s in %.0f s (%.1f MB)", self.engine_path, seconds, len(data) / 1e6)
            return engine, True
