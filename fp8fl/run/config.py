"""Run configuration: one frozen, validated dataclass built from Flower's flat run config.

``method`` names a preset of one method family (``fp8fl.methods.registry.FAMILIES``), or a
family's custom method. ``RunConfig`` holds the core keys and the family's typed ``Settings``
(``settings``): the run-config keys of a family are that family's fields, and a preset fills
those of its keys left unset (``""``), so that an explicit value overrides it. ``method`` is then
resolved to the family's preset the final settings match, or its custom method: ``method = "uq"``
with ``wire = "nearest"`` is ``bq``. The family validates its own keys, their combinations and
what they need of the rest of the run; every problem in a configuration is reported at once,
before any client starts.

Keys of another family are accepted where they were before (a sweep's shared ``[base]``): a
preset key of another family, or one of its exclusive keys (``client-formats``, ...), must stay
unset; the others are kept as given (``unused``) so that ``config.json`` records them, and do
nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fp8fl.data.tasks import TASKS, task_spec
from fp8fl.federated.seams import Components
from fp8fl.methods.family import Family, Preset, Settings
from fp8fl.methods.fp8 import FP8, Float32Codec
from fp8fl.methods.moving_average import lambda_problem
from fp8fl.methods.registry import FAMILIES, METHODS, family_of
from fp8fl.methods.robust import RULES, factor_problem
from fp8fl.numerics.formats import FloatFormat

__all__ = [
    "LOSSLESS_MODES",
    "TRACKERS",
    "ConfigError",
    "RunConfig",
    "config_changes",
]

OPTIMIZERS = ("auto", "sgd", "adam", "adamw")
TRACKERS = ("tensorboard", "mlflow", "wandb")
CONTEXT = "context"
LOSSLESS_MODES = (False, True, CONTEXT)
FAMILY_KEYS: dict[str, Family[Any]] = {
    key: family for family in FAMILIES for key in family.settings_type.declared()
}
"""Every family's run-config keys, with the family that owns each."""


class ConfigError(ValueError):
    """An invalid run configuration; the message lists every problem found."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, with the small real default of ``flwr run .``.

    Keys in Flower's run config are the field names with ``-`` for ``_`` (``num-server-rounds``);
    the family's keys are ``settings``' (``qat``, ``cq-bits``, ...).
    """

    task: str = "cifar10"
    model: str = "lenet"
    split: str = "iid"
    dirichlet_alpha: float = 0.3
    num_clients: int = 10
    num_server_rounds: int = 5
    clients_per_round: float | int = 0.2  # a float in (0, 1] is a fraction, an int a count
    min_fit_clients: int = 1
    accept_failures: bool = True
    local_epochs: int = 1
    local_steps: int = 0  # > 0 overrides local_epochs
    batch_size: int = 50
    # sgd; adam (constant lr, L2 weight decay: the local step of LPT-FL, for a like-for-like
    # comparison); adamw with cosine decay over rounds; auto: the quantizer's own step where it
    # has one (adam for LPT-FL), else adamw for kwt1 and sgd for the other models
    optimizer: str = "auto"
    lr: float = 0.1
    weight_decay: float = 1e-3
    method: str = "uq"
    format: str = "e4m3"
    # entropy-code the codec's integer arrays (fp8fl.federated.lossless); "context": the uplink's
    # against the downlink the client received
    lossless: bool | str = False
    # λ of a server moving average around the method's aggregator (0 = off)
    moving_average: float = 0.0
    # bound each client's update before the method's aggregator: none or norm-bound, each entry's
    # bound robust-norm-factor × the median of the clients' changes
    robust_aggregation: str = "none"
    robust_norm_factor: float = 1.0
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 500
    eval_samples: int = 0  # > 0 evaluates on a fixed seeded subset of the test split
    calibration_samples: int = 256
    results_dir: str = "results"
    run_name: str = ""  # "" names the run from its settings and start time
    data_root: str = ""
    device: str = "auto"
    resume: str = ""  # a run id in results-dir: continue it from its last completed round
    # experiment trackers, comma-separated: tensorboard, mlflow, wandb, or none (docs/tracking.md)
    tracking: str = "tensorboard"
    settings: Settings = field(default_factory=lambda: FP8.settings_type())
    """The method family's settings (its typed run-config keys)."""
    unused: tuple[tuple[str, Any], ...] = ()
    """Keys of other families given with values of their own: recorded, not used."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a Flower run config (kebab-case keys); raise ``ConfigError`` listing every
        unknown key, wrongly typed value, out-of-range value and invalid combination."""
        fields = {f.name: f for f in _core_fields()}
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        family_values: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name in fields:
                coerced = _coerce(name, value, fields[name].default, problems)
                if coerced is not None:
                    kwargs[name] = coerced
            elif key in FAMILY_KEYS:
                default = FAMILY_KEYS[key].settings_type.declared()[key][2]
                coerced = _coerce(name, value, default, problems)
                if coerced is not None:
                    family_values[key] = coerced
            else:
                problems.append(f"unknown key {key!r}")
        if problems:
            raise ConfigError(_report(problems))
        method = kwargs.get("method", cls.method)
        family = _family_or_fp8(method)
        mine = {k: v for k, v in family_values.items() if FAMILY_KEYS[k] is family}
        unused = tuple(
            (k, v)
            for k, v in family_values.items()
            if FAMILY_KEYS[k] is not family and v != FAMILY_KEYS[k].settings_type.declared()[k][2]
        )
        settings = family.settings_type().with_values(mine)
        return cls(**kwargs, settings=settings, unused=unused).resolved()

    def resolved(self) -> RunConfig:
        """Apply the method's preset, resolve ``optimizer``, and validate."""
        problems: list[str] = []
        family = _family_or_fp8(self.method)
        if self.method not in _METHOD_NAMES:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        preset = family.preset(self.method) if self.method in _METHOD_NAMES else family.custom
        settings = self.settings
        if not isinstance(settings, family.settings_type):
            # RunConfig(method=...) without settings of that family takes the family's defaults
            if settings != type(settings)():
                problems.append(
                    f"{type(settings).__name__} given for method {self.method!r} of the "
                    f"{family.label} family"
                )
            settings = family.settings_type()
        # a preset fills the settings left unset (""); explicit values override it
        filled = {
            k: preset.settings.value(k)
            for k in family.settings_type.preset_keys()
            if settings.value(k) == ""
        }
        settings = settings.with_values(filled)
        config = dataclasses.replace(self, method=family.resolve(settings).name, settings=settings)
        problems += config._problems()
        if not problems:  # the components are known once every single value is valid
            config = dataclasses.replace(config, optimizer=config._optimizer())
            problems += family.component_problems(config.settings, config)
            problems += config._optimizer_problems() + _context_problems(config)
        if problems:
            raise ConfigError(_report(problems))
        return config

    def _optimizer(self) -> str:
        """``optimizer``, with ``auto`` resolved: the quantizer's own local step where it has one
        (LPT-FL's Adam), else adamw for kwt1 and sgd for the other models."""
        if self.optimizer != "auto":
            return self.optimizer
        own = self.family.optimizer(self.settings)
        return own or ("adamw" if self.model == "kwt1" else "sgd")

    def _optimizer_problems(self) -> list[str]:
        """An ``optimizer`` the quantizer would not use (a silent switch would train with
        another step than the one the record names)."""
        own = self.family.optimizer(self.settings)
        if own is None or self.optimizer == own:
            return []
        return [
            f"{self.method} trains with its quantizer's own {own} step "
            f"({self.components.quantizer}): optimizer must be auto or {own}, "
            f"got {self.optimizer!r}"
        ]

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A copy with run-config ``values`` (kebab-case core keys or the family's keys) set,
        unvalidated."""
        core = {f.name for f in _core_fields()}
        fields = {k.replace("-", "_"): v for k, v in values.items() if k.replace("-", "_") in core}
        own = {k: v for k, v in values.items() if k.replace("-", "_") not in core}
        return dataclasses.replace(self, **fields, settings=self.settings.with_values(own))

    # ------------------------------------------------------------------ derived values
    @property
    def fmt(self) -> FloatFormat:
        return FloatFormat.from_name(self.format)

    @property
    def context_coding(self) -> bool:
        """Whether the uplink is coded against the downlink its client received."""
        return self.lossless == CONTEXT

    @property
    def family(self) -> Family[Any]:
        """The method's family."""
        return family_of(self.method)

    @property
    def preset(self) -> Preset[Any]:
        """The method's preset, or its family's custom method: label, colour, source."""
        return self.family.preset(self.method)

    @property
    def components(self) -> Components:
        """The registered names of this run's quantizer, codec, aggregator and server loop."""
        return self.family.components(self.settings, self)

    @property
    def trackers(self) -> tuple[str, ...]:
        """The experiment trackers of ``tracking`` (empty for "none")."""
        names = [n.strip() for n in self.tracking.split(",") if n.strip()]
        return tuple(dict.fromkeys(n for n in names if n != "none"))

    @property
    def clients_per_round_count(self) -> int:
        """Clients sampled per round: a fraction of ``num_clients`` (at least one) or a count."""
        if isinstance(self.clients_per_round, float):
            return max(1, round(self.clients_per_round * self.num_clients))
        return self.clients_per_round

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case keys, as in Flower's run config (what ``config.json`` records): the core
        keys, every family's keys (another family's unset or as given), the family's own."""
        core = {f.name.replace("_", "-"): getattr(self, f.name) for f in _core_fields()}
        others = {
            k: v
            for family in FAMILIES
            if not isinstance(self.settings, family.settings_type)
            for k, v in family.settings_type().to_mapping().items()
        }
        return core | others | dict(self.unused) | self.settings.to_mapping()

    def value(self, key: str) -> Any:
        """One run-config key's value, as ``to_mapping()[key]`` gives it, without building the
        whole mapping (the message header reads a few keys every round)."""
        name = key.replace("-", "_")
        if name in _core_names():
            return getattr(self, name)
        family = FAMILY_KEYS.get(key)
        if family is None:
            raise KeyError(f"unknown run-config key {key!r}")
        if isinstance(self.settings, family.settings_type):
            return self.settings.value(key)
        return dict(self.unused).get(key, family.settings_type.declared()[key][2])

    # ------------------------------------------------------------------ validation
    def _problems(self) -> list[str]:
        p: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                p.append(message)

        need(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task in TASKS:
            spec = task_spec(self.task)
            need(
                self.model in spec.models,
                f"model {self.model!r} does not fit task "
                f"{self.task!r}: choose {' or '.join(spec.models)}",
            )
            need(
                self.split in spec.splits,
                f"split {self.split!r} is not available for "
                f"{self.task!r}: choose {', '.join(spec.splits)}",
            )
        p += self.family.problems(self.settings, self) if self.method in _METHOD_NAMES else []
        for key, _ in self.unused:
            owner = FAMILY_KEYS[key]
            meta = owner.settings_type.declared()[key][1]
            need(not meta.exclusive, f"{key} applies to the {owner.label} methods only")
        try:
            FloatFormat.from_name(self.format)
        except ValueError as err:
            p.append(str(err))
        need(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        need(self.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        need(self.num_clients >= 1, f"num-clients must be >= 1, got {self.num_clients}")
        need(self.num_server_rounds >= 1, "num-server-rounds must be >= 1")
        if isinstance(self.clients_per_round, float):
            need(
                0 < self.clients_per_round <= 1,
                f"clients-per-round as a fraction must be in (0, 1], got {self.clients_per_round}",
            )
        else:
            need(
                1 <= self.clients_per_round <= self.num_clients,
                "clients-per-round as a count "
                f"must be in 1..num-clients ({self.num_clients}), got {self.clients_per_round}",
            )
        if self.num_clients >= 1 and not p:
            need(
                1 <= self.min_fit_clients <= self.clients_per_round_count,
                f"min-fit-clients must be in 1..{self.clients_per_round_count} (the clients "
                f"sampled per round), got {self.min_fit_clients}",
            )
        need(
            self.local_epochs >= 0 and self.local_steps >= 0,
            "local-epochs and local-steps must be >= 0",
        )
        need(
            self.local_epochs > 0 or self.local_steps > 0,
            "set local-epochs or local-steps to a positive number",
        )
        need(self.batch_size >= 1, f"batch-size must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight-decay must be >= 0, got {self.weight_decay}")
        if problem := lambda_problem("moving-average", self.moving_average):
            p.append(problem)
        need(
            self.robust_aggregation in RULES,
            f"robust-aggregation must be one of {', '.join(RULES)}, "
            f"got {self.robust_aggregation!r}",
        )
        if problem := factor_problem(self.robust_norm_factor):
            p.append(problem)
        need(self.eval_every >= 1, f"eval-every must be >= 1, got {self.eval_every}")
        need(self.eval_batch_size >= 1, "eval-batch-size must be >= 1")
        need(self.eval_samples >= 0, "eval-samples must be >= 0 (0 = the whole test split)")
        need(self.calibration_samples >= 1, "calibration-samples must be >= 1")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(bool(self.results_dir), "results-dir must not be empty")
        unknown = [n for n in self.trackers if n not in TRACKERS]
        need(
            not unknown and bool(self.tracking.strip()),
            f"tracking must be none or a comma-separated list of {', '.join(TRACKERS)}, "
            f"got {self.tracking!r}",
        )
        need(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
            f"device must be auto, cpu or cuda[:n], got {self.device!r}",
        )
        return p


_METHOD_NAMES = frozenset(p.name for family in FAMILIES for p in (*family.presets, family.custom))


def _family_or_fp8(method: str) -> Family[Any]:
    """The family of ``method``; FP8's for an unknown name (reported by ``resolved``)."""
    try:
        return family_of(method)
    except KeyError:
        return FP8


def _core_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(RunConfig) if f.name not in ("settings", "unused")]


@cache
def _core_names() -> frozenset[str]:
    return frozenset(f.name for f in _core_fields())


def config_changes(
    recorded: Mapping[str, Any], config: RunConfig, ignored: Collection[str] = ()
) -> list[str]:
    """Each key of a ``recorded`` run config (a checkpoint's, a ``config.json``'s) whose value
    ``config`` changes, as "key was old, now new", sorted; ``ignored`` keys are not compared.
    Keys the record lacks (added since) are not compared either: records stay readable."""
    mine = config.to_mapping()
    return sorted(
        f"{k} was {v!r}, now {mine.get(k)!r}"
        for k, v in recorded.items()
        if k not in ignored and mine.get(k) != v
    )


def _context_problems(config: RunConfig) -> list[str]:
    """``lossless = "context"`` codes each uplink against the downlink codes of its round: the
    method must send the same codec both ways, with codes (not float32), in synchronous rounds."""
    if not config.context_coding:
        return []
    parts = config.components
    if not parts.synchronous:
        return [
            f"lossless = 'context' needs synchronous rounds; {config.method} runs "
            f"{parts.server_loop}"
        ]
    if parts.codec == Float32Codec.name or parts.downlink_codec != parts.codec:
        return [
            "lossless = 'context' codes the uplink's codes against the downlink's: it needs the "
            f"same codec with codes both ways, {config.method} sends {parts.codec} up and "
            f"{parts.downlink_codec} down"
        ]
    return []


def _coerce(name: str, value: Any, default: Any, problems: list[str]) -> Any:
    """Check a value against the type of the field's default (ints are accepted for floats)."""
    if name == "lossless":
        if not (isinstance(value, bool) or value == CONTEXT):
            problems.append(f"lossless must be true, false or 'context', got {value!r}")
            return None
        return value
    if name == "clients_per_round":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"clients-per-round must be a number, got {value!r}")
            return None
        return value
    expected = type(default)
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        key = name.replace("_", "-")
        problems.append(
            f"{key} must be {expected.__name__}, got {value!r} ({type(value).__name__})"
        )
        return None
    return value


def _report(problems: list[str]) -> str:
    return "invalid run config:\n" + "\n".join(f"  - {p}" for p in problems)
