"""The project's own promises about itself: pip and conda name the same packages, CI runs the README's command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"]}
    pip_names |= {_name(r) for group in project["optional-dependencies"].values() for r in group}

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda_names |= {_name(r) for r in dep["pip"]}
        else:
            conda_names.add(_name(dep))
    conda_names -= {"python", "pip"}
    only_conda, only_pip = sorted(conda_names - pip_names), sorted(pip_names - conda_names)
    assert conda_names == pip_names, f"only in environment.yml: {only_conda}; only in pyproject: {only_pip}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, flags=re.M)


def test_every_dependency_is_explained_in_the_readme():
    readme = (ROOT / "README.md").read_text().lower()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert _name(req) in readme.replace("_", "-"), f"README does not say why {req} is a dependency"
