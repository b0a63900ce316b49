"""requirements.lock: agrees with pyproject.toml, and is what this environment has installed.

`make` installs only from the lock; these tests catch a pyproject.toml edit without `make lock`, and an
environment that drifted from the lock (what a fresh clone gets is what the tests ran against).
"""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
RUNTIME_LOCK = REPO / "requirements.runtime.lock"  # what the images install: extra `all` only
# Extras `make lock` resolves (the Makefile's `lock` target).
LOCKED_EXTRAS = ("all", "test", "dev")
# Installed beside the lock: the project itself and the venv's own installer.
NOT_LOCKED = {"lmops", "pip"}


def locked_pins(lock: Path = LOCK) -> dict[str, Version]:
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def direct_requirements(locked_extras: tuple[str, ...] = LOCKED_EXTRAS) -> list[Requirement]:
    """pyproject's dependencies plus the locked extras, with `lmops[...]` self-references expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs, todo, seen = list(project["dependencies"]), list(locked_extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in extras[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "lmops":
                todo.extend(req.extras)
            else:
                reqs.append(text)
    return [Requirement(r) for r in reqs]


def public(version: Version) -> Version:
    """2.13.0+cu128 -> 2.13.0: the lock holds the CPU build of torch; a CUDA venv (TORCH_INDEX_URL) has
    the same release built for CUDA."""
    return Version(version.public)


def test_lock_pins_every_direct_dependency_within_pyprojects_range():
    pins = locked_pins()
    problems = []
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: in pyproject.toml but not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: requirements.lock pins {pins[name]}, pyproject.toml asks {req.specifier}")
    assert not problems, "pyproject.toml and requirements.lock disagree (run `make lock`):\n" + "\n".join(problems)


def test_runtime_lock_is_the_run_time_part_of_the_lock_at_its_versions():
    full, runtime = locked_pins(), locked_pins(RUNTIME_LOCK)
    differ = [f"{n}: runtime lock {v}, lock {full.get(n, 'nothing')}" for n, v in sorted(runtime.items()) if full.get(n) != v]
    missing = [r.name for r in direct_requirements(("all",)) if canonicalize_name(r.name) not in runtime]
    # test/dev tooling may be there only as another run-time package's dependency, never on its own
    run_direct = {canonicalize_name(r.name) for r in direct_requirements(("all",))}
    tooling = [r.name for r in direct_requirements(("test", "dev")) if canonicalize_name(r.name) in runtime
               and canonicalize_name(r.name) not in run_direct and not _needed_by_others(r.name)]
    assert not differ and not missing and not tooling, (
        "requirements.runtime.lock is stale (run `make lock`):\n" + "\n".join(
            differ + [f"{n}: a run-time dependency missing" for n in missing]
            + [f"{n}: test/dev tooling in the image's lock" for n in tooling]))


def _needed_by_others(name: str) -> bool:
    """The runtime lock's `# via` annotation names a package other than lmops itself."""
    text = RUNTIME_LOCK.read_text()
    m = re.search(rf"^{re.escape(name)}==\S+\n((?:\s+#.*\n)+)", text, re.M | re.I)
    via = [v.strip(" #\n") for v in (m.group(1).splitlines() if m else [])]
    return any(v and not v.startswith(("via lmops", "lmops", "-c ")) and v != "via" for v in via)


def test_lock_pins_torch_to_the_version_make_installs_first():
    makefile = (REPO / "Makefile").read_text()
    wanted = re.search(r"^TORCH_VERSION := (\S+)$", makefile, re.M).group(1)
    assert public(locked_pins()["torch"]) == Version(wanted)


def test_environment_has_exactly_the_locked_versions():
    pins = locked_pins()
    # the environment's own site-packages: not sys.path, which other imports extend (Ray puts its vendored
    # thirdparty_files there once imported elsewhere in the session)
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions(path=site)}
    # A CUDA torch (TORCH_INDEX_URL) brings its nvidia-* libraries, which the CPU lock cannot list.
    torch_needs = {canonicalize_name(Requirement(r).name) for r in (metadata.requires("torch") or [])}
    wrong = [f"{n}: installed {installed.get(n, 'nothing')}, locked {v}"
             for n, v in sorted(pins.items()) if n not in installed or public(installed[n]) != public(v)]
    extra = sorted(n for n in installed if n not in pins and n not in NOT_LOCKED and n not in torch_needs)
    assert not wrong and not extra, (
        "this environment is not the lock (recreate it: rm -rf .venv && make venv):\n"
        + "\n".join(wrong + [f"{n}: installed but not in requirements.lock" for n in extra]))


def test_rayjob_ray_version_is_the_ray_the_images_install():
    # the images install Ray from the lock; the RayJob's rayVersion must name that Ray (KubeRay decides what it
    # injects from it), not the Ray of the process that renders the manifest
    from lmops.train.kuberay.ray_version import RAY_VERSION

    assert Version(RAY_VERSION) == locked_pins()["ray"], "update lmops/train/kuberay/ray_version.py with the lock"
