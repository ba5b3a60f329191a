"""``requirements.lock`` pins the whole dependency tree, and satisfies every dependency that
``pyproject.toml`` declares (extras included), so that an install from it resolves nothing anew."""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"{name} is pinned twice"
        pins[key] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return [Requirement(s) for s in specs]


def test_every_declared_dependency_is_locked_at_a_satisfying_version():
    pins = locked()
    for req in declared():
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is declared but not in requirements.lock"
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {req.name}=={version}, which does not satisfy {req}"
        )


def test_requirements_of_declared_extras_are_locked_too():
    """``flwr[simulation]`` needs ray: what an extra pulls in must be pinned as well."""
    pins = locked()
    for req in declared():
        for extra in req.extras:
            for dep in map(Requirement, importlib.metadata.requires(req.name) or []):
                if dep.marker is None or not dep.marker.evaluate({"extra": extra}):
                    continue
                version = pins.get(canonicalize_name(dep.name))
                assert version is not None, f"{dep.name} ({req.name}[{extra}]) is not locked"
                assert dep.specifier.contains(version, prereleases=True), (dep, version)


def test_the_abi_coupled_torch_trio_is_pinned_exactly():
    exact = {r.name: str(r.specifier) for r in declared() if r.name.startswith("torch")}
    assert exact == {"torch": "==2.11.0", "torchvision": "==0.26.0", "torchaudio": "==2.11.0"}


def test_the_environment_was_installed_from_the_lock():
    """What runs the tests is what the lock says (catches an install that bypassed it)."""
    for name, version in locked().items():
        assert importlib.metadata.version(name) == version, name
