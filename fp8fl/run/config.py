"""Run configuration: one frozen, validated dataclass built from Flower's flat run config.

``method`` names a ``MethodSpec`` of ``fp8fl.methods.registry``, which says which quantizer, codec,
aggregator and server loop the run uses. The FP8 methods of Wang et al. 2024 (arXiv:2407.02610,
Table 1, Table 2, Table 3, Fig. 4) are presets of three switches — ``qat`` (rounding of the local
QAT forward), ``wire`` (rounding on the wire, both directions) and ``server-opt`` (how the server
aggregates):

| method             | qat        | wire       | server-opt | in the paper                     |
|--------------------|------------|------------|------------|----------------------------------|
| fp32               | none       | fp32       | average    | FP32 FedAvg                      |
| uq                 | nearest    | stochastic | average    | FP8FedAvg-UQ                     |
| uq+                | nearest    | stochastic | mse        | FP8FedAvg-UQ+ (ServerOptimize)   |
| bq                 | nearest    | nearest    | average    | det. CQ (Table 3), BQ (Fig. 4)   |
| qat-fp32wire       | nearest    | fp32       | average    | det. QAT (Table 2)               |
| randqat-fp32wire   | stochastic | fp32       | average    | rand. QAT (Table 2)              |

A switch given explicitly overrides the preset; ``method`` is then resolved to the preset the final
switches match, or ``custom``. A component's own keys (``server-opt-steps``, ...) are declared
by the component as ``Option``s and kept in ``options``; the component's checks validate them.
Every problem in a configuration is reported at once, before any client starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fp8fl.data.tasks import TASKS, task_spec
from fp8fl.federated.layer_formats import downlink_format_problems, layer_formats_problems
from fp8fl.federated.seams import Components
from fp8fl.methods.registry import (
    CUSTOMS,
    FAMILIES,
    METHODS,
    OPTIONS,
    MethodSpec,
    component_problems,
    family_keys,
    method_spec,
    own_optimizer,
)
from fp8fl.numerics.formats import FloatFormat
from fp8fl.run.client_formats import client_formats_problems

__all__ = [
    "LOSSLESS_MODES",
    "QAT_MODES",
    "SERVER_OPTS",
    "TRACKERS",
    "WIRE_MODES",
    "ConfigError",
    "RunConfig",
]

QAT_MODES = ("none", "nearest", "stochastic")
WIRE_MODES = ("fp32", "nearest", "stochastic")
SERVER_OPTS = ("average", "mse")
OPTIMIZERS = ("auto", "sgd", "adam", "adamw")
TRACKERS = ("tensorboard", "mlflow", "wandb")
CONTEXT = "context"
LOSSLESS_MODES = (False, True, CONTEXT)


class ConfigError(ValueError):
    """An invalid run configuration; the message lists every problem found."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, with the small real default of ``flwr run .``.

    Keys in Flower's run config are the field names with ``-`` for ``_`` (``num-server-rounds``).
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
    qat: str = ""  # "" takes the method's preset
    wire: str = ""
    server_opt: str = ""
    format: str = "e4m3"
    # entropy-code the codec's integer arrays (fp8fl.federated.lossless); "context": the uplink's
    # against the downlink the client received
    lossless: bool | str = False
    client_formats: str = ""  # "" = every client in `format`; else "fp32:0.3,e4m3:0.7", ...
    layer_formats: str = ""  # "" = every layer in `format`; else "fc1:e2m1,conv1:e4m3", ...
    downlink_format: str = ""  # "" = the downlink in `format`; else e.g. "e3m2"
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
    options: dict[str, Any] = field(default_factory=lambda: _default_options())
    """The components' own keys (``OPTIONS``) and their values."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a Flower run config (kebab-case keys); raise ``ConfigError`` listing every
        unknown key, wrongly typed value, out-of-range value and invalid combination."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "options"}
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        options = _default_options()
        for key, value in values.items():
            name = key.replace("-", "_")
            if name in fields:
                coerced = _coerce(name, value, fields[name].default, problems)
                if coerced is not None:
                    kwargs[name] = coerced
            elif key in OPTIONS:
                coerced = _coerce(name, value, OPTIONS[key].default, problems)
                if coerced is not None:
                    options[key] = coerced
            else:
                problems.append(f"unknown key {key!r}")
        if problems:
            raise ConfigError(_report(problems))
        return cls(**kwargs, options=options).resolved()

    def resolved(self) -> RunConfig:
        """Apply the method preset, resolve ``optimizer``, and validate."""
        problems: list[str] = []
        try:
            spec = method_spec(self.method)
        except KeyError:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
            spec = CUSTOMS["fp8"]
        values = self.to_mapping()
        # a preset fills the settings left unset (""); explicit values override it
        filled = {k: v for k, v in spec.settings.items() if values.get(k) == ""}
        final = {k: filled.get(k, values[k]) for k in family_keys(spec.family)}
        method = next(
            (
                other.name
                for other in METHODS.values()
                if other.family == spec.family
                and all(final[k] == v for k, v in other.settings.items())
            ),
            CUSTOMS[spec.family].name,
        )
        config = dataclasses.replace(
            self, method=method, options=_default_options() | self.options
        )._with(filled)
        problems += config._problems()
        if not problems:  # the components are known once every single value is valid
            config = dataclasses.replace(config, optimizer=config._optimizer())
            problems += component_problems(config) + _context_problems(config)
        if problems:
            raise ConfigError(_report(problems))
        return config

    def _optimizer(self) -> str:
        """``optimizer``, with ``auto`` resolved: the quantizer's own local step where it has one
        (LPT-FL's Adam), else adamw for kwt1 and sgd for the other models."""
        if self.optimizer != "auto":
            return self.optimizer
        return own_optimizer(self) or ("adamw" if self.model == "kwt1" else "sgd")

    def _with(self, values: dict[str, Any]) -> RunConfig:
        """A copy with run-config ``values`` (kebab-case keys of fields or options) set."""
        fields = {k.replace("-", "_"): v for k, v in values.items() if k not in OPTIONS}
        options = {k: v for k, v in values.items() if k in OPTIONS}
        return dataclasses.replace(self, **fields, options=self.options | options)

    # ------------------------------------------------------------------ derived values
    @property
    def fmt(self) -> FloatFormat:
        return FloatFormat.from_name(self.format)

    @property
    def context_coding(self) -> bool:
        """Whether the uplink is coded against the downlink its client received."""
        return self.lossless == CONTEXT

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    @property
    def components(self) -> Components:
        """The registered names of this run's quantizer, codec, aggregator and server loop."""
        return self.spec.components_for(self)

    def option(self, key: str) -> Any:
        """The value of a component's own run-config key."""
        return self.options[key]

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
        """Kebab-case keys, as in Flower's run config (what ``config.json`` records)."""
        fields = {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "options"
        }
        return fields | dict(self.options)

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
        family = self.spec.family
        if family == "fp8":
            p += _fp8_problems_of(self)
        values = self.to_mapping()
        for other, label in FAMILIES.items():
            if other == family:
                continue
            for key in family_keys(other):
                need(values[key] == "", f"{key} applies to the {label} methods only")
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
        for key, option in OPTIONS.items():
            problem = option.problem(self.options.get(key, option.default))
            if problem:
                p.append(problem)
        need(self.eval_every >= 1, f"eval-every must be >= 1, got {self.eval_every}")
        need(self.eval_batch_size >= 1, "eval-batch-size must be >= 1")
        need(self.eval_samples >= 0, "eval-samples must be >= 0 (0 = the whole test split)")
        need(self.calibration_samples >= 1, "calibration-samples must be >= 1")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        p += client_formats_problems(self, family)
        p += layer_formats_problems(self, family) + downlink_format_problems(self, family)
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


def _fp8_problems_of(config: RunConfig) -> list[str]:
    """The FP8 switches: each from its list, and the combinations that make no sense."""
    p = []
    if config.qat not in QAT_MODES:
        p.append(f"qat must be one of {', '.join(QAT_MODES)}, got {config.qat!r}")
    if config.wire not in WIRE_MODES:
        p.append(f"wire must be one of {', '.join(WIRE_MODES)}, got {config.wire!r}")
    if config.server_opt not in SERVER_OPTS:
        p.append(f"server-opt must be one of {', '.join(SERVER_OPTS)}, got {config.server_opt!r}")
    if config.qat == "none" and config.wire in ("nearest", "stochastic"):
        p.append("wire quantization uses the α learned by QAT: with qat = 'none' use wire = 'fp32'")
    if config.server_opt == "mse" and config.wire == "fp32":
        p.append(
            "server-opt = 'mse' minimises the error of quantized communication; with "
            "wire = 'fp32' its solution is the plain average: use server-opt = 'average'"
        )
    return p


def _context_problems(config: RunConfig) -> list[str]:
    """``lossless = "context"`` codes each uplink against the downlink codes of its round: the
    method must send the same codec both ways, with codes (not float32), in synchronous rounds."""
    if not config.context_coding:
        return []
    parts = config.components
    if parts.server_loop != "sync":
        return [
            f"lossless = 'context' needs synchronous rounds; {config.method} runs "
            f"{parts.server_loop}"
        ]
    if parts.codec == "fp32" or parts.downlink_codec != parts.codec:
        return [
            "lossless = 'context' codes the uplink's codes against the downlink's: it needs the "
            f"same codec with codes both ways, {config.method} sends {parts.codec} up and "
            f"{parts.downlink_codec} down"
        ]
    return []


def _default_options() -> dict[str, Any]:
    return {key: option.default for key, option in OPTIONS.items()}


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
