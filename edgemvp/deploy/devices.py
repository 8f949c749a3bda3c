"""Device profiles: one YAML file per target device, validated on load, with a registry and aliases.

A profile says what the device is (``hardware``), how onnxruntime runs there (``runtime``), how models are
exported for it (``export``, ``quantization``), what a model must meet (``budget``) and what the latency cost
model is fitted to (``calibration``: reference models with their latency on the device and the public sources
of those figures). The packaged profiles live in ``edgemvp/deploy/device_profiles/`` (the repository's top-level
``device_profiles`` points there); a user adds profiles with ``--profiles PATH`` or ``EDGEMVP_PROFILES``
(files or folders, ``os.pathsep``-separated), and ``edgemvp devices calibrate`` writes fitted profiles to
``<cache>/profiles`` (:mod:`edgemvp.deploy.calibrate`). Later folders override earlier ones by name: packaged < cache < env < ``--profiles``.
"""
from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from edgemvp import checks
from edgemvp.errors import UsageError, unknown
from edgemvp.models.factory import ARCHS, FAMILIES, QuantMode
from edgemvp.paths import cache_dir, read_regular
from edgemvp.safeload import load_yaml

logger = logging.getLogger(__name__)

PACKAGED = Path(__file__).with_name("device_profiles")
ENV_PROFILES = "EDGEMVP_PROFILES"
STATISTICS = ("p50", "p90", "p99", "mean")
OPT_LEVELS = ("disable", "basic", "extended", "all")
PRECISIONS = ("fp32", "fp16", "int8")
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # also a file name: no path, like dataset names
QUANT_MODES = ("static-qdq", "dynamic", "none")


class _Fields:
    """Typed access to one YAML mapping; every error names the file and the dotted field."""

    def __init__(self, data: Any, source: str, prefix: str) -> None:
        if not isinstance(data, dict):
            raise UsageError(f"{source}: '{prefix or 'profile'}' must be a mapping")
        self.data, self.source, self.prefix = data, source, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, what: str) -> UsageError:
        """An error about one field."""
        return UsageError(f"{self.source}: field '{self._name(key)}' {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., check: Any = None) -> Any:
        """A field of a type (ints are accepted for floats); ``default`` omitted means required."""
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {str(value)[:40]!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not checks.in_range(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if check is not None and not check(value):
            raise self.fail(key, f"has an invalid value {str(value)[:40]!r}")
        return value

    def positive(self, key: str, default: Any = ...) -> Any:
        """A number > 0."""
        return self.get(key, float, default, lambda v: v > 0)

    def choice(self, key: str, valid: tuple[str, ...], default: Any = ...) -> Any:
        """One of ``valid``."""
        value = self.get(key, str, default)
        if value is not None and value not in valid:
            raise self.fail(key, f"is '{value}'; valid values: {', '.join(valid)}")
        return value

    def section(self, key: str, required: bool = True) -> "_Fields":
        """A nested mapping."""
        if key not in self.data and not required:
            return _Fields({}, self.source, self._name(key))
        if key not in self.data:
            raise self.fail(key, "is missing")
        return _Fields(self.data[key], self.source, self._name(key))

    def items(self, key: str) -> list["_Fields"]:
        """A list of mappings (empty when absent)."""
        value = self.get(key, list, [])
        return [_Fields(v, self.source, f"{self._name(key)}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Detect:
    """How to tell that edgemvp runs on the device itself: machine arch and a marker file's contents."""

    always: bool = False
    machine: str | None = None
    file: str | None = None
    contains: str | None = None

    def matches(self) -> bool:
        """Whether this machine is the device."""
        if self.always:
            return True
        if self.machine is None and self.file is None:
            return False
        if self.machine is not None and platform.machine() != self.machine:
            return False
        if self.file is not None:
            try:  # bounded, regular files only: a profile naming /dev/zero must not hang the CLI
                text = read_regular(self.file, 1 << 16).decode(errors="replace")
            except (OSError, UsageError):
                return False
            return self.contains is None or self.contains in text
        return True


@dataclass(frozen=True)
class Hardware:
    """What the device is; the numbers seed the cost model's priors (``auto`` fields are read on this machine)."""

    cpu: str
    arch: str
    cores: int
    accelerator: str | None
    memory_gb: float
    cache_mb: float
    peak_gflops: float
    mem_bandwidth_gbs: float
    channel_block: int


@dataclass(frozen=True)
class Provider:
    """An onnxruntime execution provider with its options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """How onnxruntime runs on the device: providers in order of preference, threads, graph optimisation."""

    providers: tuple[Provider, ...]
    threads: int
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"


@dataclass(frozen=True)
class ExportSettings:
    """Export settings: opset, input side (None: the model's own) and deployed precision."""

    opset: int = 18
    input_size: int | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


@dataclass(frozen=True)
class QuantPreset:
    """onnxruntime quantization per family; the defaults are the families' (static QDQ for CNNs, dynamic for ViTs)."""

    cnn: QuantMode = FAMILIES["cnn"].int8_mode
    vit: QuantMode = FAMILIES["vit"].int8_mode
    per_channel: bool = True
    calibration_samples: int = 256


@dataclass(frozen=True)
class Budget:
    """What a deployable model must meet on the device."""

    latency_ms: float
    statistic: Literal["p50", "p90", "p99", "mean"] = "p90"
    model_size_mb: float | None = None
    peak_memory_mb: float | None = None


@dataclass(frozen=True)
class Source:
    """A public source (or a local measurement) behind reference latencies."""

    key: str
    title: str
    url: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class ReferenceModel:
    """A model the cost model can rebuild: an edgemvp arch at an input size, optionally pruned (random masks)."""

    arch: str
    size: int = 224
    channels: int = 3
    classes: int = 1000
    ratio: float = 0.0
    seed: int = 0

    def key(self) -> str:
        """A stable name, also used for file names."""
        return f"{self.arch}-{self.channels}x{self.size}-c{self.classes}-r{self.ratio:g}-s{self.seed}"


@dataclass(frozen=True)
class Reference:
    """A reference model's latency on the device, with where the figure comes from."""

    model: ReferenceModel
    latency_ms: float
    statistic: str
    source: str
    precision: str = "fp32"


@dataclass(frozen=True)
class Calibration:
    """What the device's cost model is fitted to.

    Attributes:
        references: Latencies on the device (public figures, or measured by ``devices calibrate``).
        sources: Where each reference's figure comes from, by key.
        suite: Models ``devices calibrate`` measures on the device itself.
        constants: Fitted cost-model constants (written by ``devices calibrate``), else fitted lazily.
        spread: Each latency statistic as a multiple of the median on this device (``p50`` is 1), so that an
            estimate at the references' statistic can be compared with a budget at another one.
        spread_source: Where the spread comes from (a key of ``sources``).
    """

    references: tuple[Reference, ...] = ()
    sources: Mapping[str, Source] = field(default_factory=dict)
    suite: tuple[ReferenceModel, ...] = ()
    constants: Mapping[str, float] | None = None
    spread: Mapping[str, float] = field(default_factory=dict)
    spread_source: str | None = None

    def convert(self, value_ms: float, src: str, dst: str, device: str) -> float:
        """A latency at statistic ``src`` expressed at ``dst`` with the stated spread.

        Raises:
            UsageError: The profile states no spread for one of the two statistics (unlike statistics are
                never compared as if they were alike).
        """
        if src == dst:
            return value_ms
        missing = [k for k in (src, dst) if k not in self.spread]
        if missing:
            raise UsageError(f"device '{device}': its references are {src} latencies and the budget is {dst}; "
                             f"its profile states no calibration.spread.{missing[0]} to convert between them")
        return value_ms * self.spread[dst] / self.spread[src]


@dataclass(frozen=True)
class DeviceProfile:
    """One target device (see the module docstring for the YAML layout)."""

    name: str
    description: str
    aliases: tuple[str, ...]
    detect: Detect
    hardware: Hardware
    runtime: Runtime
    export: ExportSettings
    quantization: QuantPreset
    budget: Budget
    calibration: Calibration
    path: Path | None = None

    def is_current(self) -> bool:
        """Whether edgemvp runs on this device now (``host`` always does)."""
        return self.detect.matches()


def _auto_cache_mb() -> float:
    """The last-level cache of this machine in MiB (32 when it cannot be read)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"), reverse=True):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:].upper(), 1 / 1024 ** 2)
        return float(text.rstrip("KMGkmg")) * scale
    return 32.0


def _auto_channel_block() -> int:
    """Channels per SIMD register of fp32 on this machine: onnxruntime's NCHWc block (16 AVX-512, 8 AVX2)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return 16 if " avx512f" in flags else 8 if " avx2" in flags else 4


def _number_or_auto(f: _Fields, key: str, kind: type, auto: Any, most: float) -> Any:
    if f.data.get(key) == "auto":
        return auto()
    return f.get(key, kind, check=lambda v: 0 < v <= most)


def _hardware(f: _Fields) -> Hardware:
    arch = f.get("arch", str)
    return Hardware(
        cpu=f.get("cpu", str), arch=platform.machine() if arch == "auto" else arch,
        cores=_number_or_auto(f, "cores", int, lambda: os.cpu_count() or 1, 4096),
        accelerator=f.get("accelerator", str, None), memory_gb=f.positive("memory_gb"),
        cache_mb=_number_or_auto(f, "cache_mb", float, _auto_cache_mb, 1e6), peak_gflops=f.positive("peak_gflops"),
        mem_bandwidth_gbs=f.positive("mem_bandwidth_gbs"),
        channel_block=_number_or_auto(f, "channel_block", int, _auto_channel_block, 1024))


def _runtime(f: _Fields) -> Runtime:
    providers = []
    for p in f.items("providers"):
        providers.append(Provider(p.get("name", str), dict(p.get("options", dict, {}))))
    if not providers:
        raise f.fail("providers", "must list at least one execution provider")
    threads = f.get("threads", int, 0, lambda v: 0 <= v <= 1024)
    return Runtime(tuple(providers), threads, f.choice("graph_optimization", OPT_LEVELS, "all"))


def _model(f: _Fields) -> ReferenceModel:
    return ReferenceModel(f.choice("arch", tuple(ARCHS)), f.get("size", int, 224, lambda v: 8 <= v <= 4096),
                          f.get("channels", int, 3, lambda v: v in (1, 3)),
                          f.get("classes", int, 1000, lambda v: 1 < v <= 100_000),
                          f.get("ratio", float, 0.0, lambda v: 0 <= v < 1),
                          f.get("seed", int, 0, lambda v: 0 <= v <= checks.SEED_MAX))


def _calibration(f: _Fields) -> Calibration:
    sources = {}
    for key, value in f.get("sources", dict, {}).items():
        s = _Fields(value, f.source, f"{f.prefix}.sources.{key}")
        sources[str(key)] = Source(str(key), s.get("title", str), s.get("url", str, None), s.get("note", str, None))
    refs = []
    for r in f.items("references"):
        source = r.get("source", str)
        if source not in sources:
            raise r.fail("source", f"names '{source}', which is not under calibration.sources")
        refs.append(Reference(_model(r.section("model")), r.positive("latency_ms"),
                              r.choice("statistic", STATISTICS, "p50"), source, r.choice("precision", PRECISIONS, "fp32")))
    spread, spread_source = _spread(f.section("spread", required=False), sources)
    constants = f.get("constants", dict, None)
    if constants is not None:
        bad = [k for k, v in constants.items() if not checks.in_range(v)]
        if bad:
            raise f.fail(f"constants.{str(bad[0])[:40]}", f"must be a finite number, got {str(constants[bad[0]])[:40]!r}")
        constants = {str(k): float(v) for k, v in constants.items()}
    return Calibration(tuple(refs), sources, tuple(_model(m) for m in f.items("suite")), constants, spread,
                       spread_source)


def _spread(f: _Fields, sources: Mapping[str, Source]) -> tuple[dict[str, float], str | None]:
    """``calibration.spread``: statistics as multiples of the median, and the source they come from."""
    if not f.data:
        return {}, None
    source = f.get("source", str)
    if source not in sources:
        raise f.fail("source", f"names '{source}', which is not under calibration.sources")
    spread = {k: f.positive(k) for k in STATISTICS if k in f.data}
    unknown_keys = sorted(set(f.data) - set(STATISTICS) - {"source"})
    if unknown_keys:
        raise f.fail(str(unknown_keys[0])[:40], f"is not a statistic ({', '.join(STATISTICS)})")
    if spread.get("p50", 1.0) != 1.0:
        raise f.fail("p50", "must be 1 (the spread is relative to the median)")
    return {"p50": 1.0, **spread}, source


def parse_profile(data: Any, source: str, path: Path | None = None) -> DeviceProfile:
    """Validate a profile's YAML data.

    Raises:
        UsageError: A missing or invalid field, naming the file and the field.
    """
    f = _Fields(data, source, "")
    d, e, q, b = (f.section(k, required=False) for k in ("detect", "export", "quantization", "budget"))
    if "budget" not in f.data:
        raise f.fail("budget", "is missing")
    aliases = f.get("aliases", list, [])
    if not all(isinstance(a, str) and PROFILE_NAME.fullmatch(a) for a in aliases):
        raise f.fail("aliases", "must be a list of plain names (lower-case letters, digits, '.', '_', '-')")
    return DeviceProfile(
        name=f.get("name", str, check=PROFILE_NAME.fullmatch), description=f.get("description", str, ""),
        aliases=tuple(aliases),
        detect=Detect(d.get("always", bool, False), d.get("machine", str, None), d.get("file", str, None),
                      d.get("contains", str, None)),
        hardware=_hardware(f.section("hardware")), runtime=_runtime(f.section("runtime")),
        export=ExportSettings(e.get("opset", int, 18, lambda v: 7 <= v <= 23),
                              e.get("input_size", int, None, lambda v: 8 <= v <= 4096),
                              e.choice("precision", PRECISIONS, "fp32")),
        quantization=QuantPreset(q.choice("cnn", QUANT_MODES, QuantPreset.cnn), q.choice("vit", QUANT_MODES, QuantPreset.vit),
                                 q.get("per_channel", bool, True),
                                 q.get("calibration_samples", int, 256, lambda v: 0 < v <= 100_000)),
        budget=Budget(b.positive("latency_ms"), b.choice("statistic", STATISTICS, "p90"),
                      b.positive("model_size_mb", None), b.positive("peak_memory_mb", None)),
        calibration=_calibration(f.section("calibration", required=False)), path=path)


def load_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """Read and validate one profile file.

    Raises:
        UsageError: Unreadable file, malformed YAML, or an invalid profile.
    """
    path = Path(path)
    return parse_profile(load_yaml(path, f"device profile {path}"), str(path), path)


def user_profile_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where ``devices calibrate`` writes fitted profiles: ``<cache>/profiles``."""
    return cache_dir(cache) / "profiles"


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    if path.is_file():
        return [path]
    raise UsageError(f"device profile path not found: {path}")


class ProfileRegistry:
    """Device profiles by name and alias, from the packaged folder and user files or folders."""

    def __init__(self, extra: tuple[Path, ...] = (), cache: str | os.PathLike[str] | None = None) -> None:
        """Load every profile: packaged, then ``<cache>/profiles``, ``EDGEMVP_PROFILES``, then ``extra``.

        Raises:
            UsageError: A missing path or an invalid profile file.
        """
        env = [Path(p) for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p]
        cached = user_profile_dir(cache)
        self.profiles: dict[str, DeviceProfile] = {}
        roots = [PACKAGED, *([cached] if cached.is_dir() else []), *env, *extra]
        for root in roots:
            for file in _yaml_files(Path(root)):
                profile = load_profile(file)
                self.profiles[profile.name] = profile
        self.aliases = {a: p.name for p in self.profiles.values() for a in p.aliases if a not in self.profiles}

    def names(self) -> list[str]:
        """Profile names, sorted."""
        return sorted(self.profiles)

    def get(self, name: str) -> DeviceProfile:
        """A profile by name or alias.

        Raises:
            UsageError: Unknown device, listing names and aliases.
        """
        name = self.aliases.get(name, name)
        if name not in self.profiles:
            raise unknown("device", name, self.names() + sorted(self.aliases))
        return self.profiles[name]

    def current(self) -> list[DeviceProfile]:
        """The profiles whose ``detect`` block matches this machine (``host`` always does)."""
        return [p for p in self.profiles.values() if p.is_current()]


def profile_file(folder: Path, name: str) -> Path:
    """``<folder>/<name>.yaml`` for a plain profile name, checked to stay inside ``folder``.

    Raises:
        UsageError: A name with a path in it (``../x``), or one that resolves outside the folder.
    """
    if not PROFILE_NAME.fullmatch(name):
        raise UsageError(f"device profile name {name[:80]!r} is not a plain name (lower-case letters, digits, "
                         "'.', '_', '-')")
    folder = folder.resolve()
    out = (folder / f"{name}.yaml").resolve()
    if out.parent != folder:
        raise UsageError(f"device profile name {name!r} would be written outside {folder}")
    return out


def profile_summary(profile: DeviceProfile) -> dict[str, Any]:
    """A YAML-ready view of a loaded profile (``devices show``)."""
    data = asdict(profile)
    data["path"] = str(profile.path) if profile.path else None
    data["detected_here"] = profile.is_current()
    cal = data["calibration"]
    cal["references"] = [f"{r.model.key()}: {r.latency_ms:g} ms {r.statistic} [{r.source}]"
                         for r in profile.calibration.references]
    cal["suite"] = [m.key() for m in profile.calibration.suite]
    return data
