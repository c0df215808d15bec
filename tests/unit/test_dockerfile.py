"""The Dockerfile cannot be built here (no container engine); keep it honest instead.

Every runtime target's entrypoint must be a console script of this distribution that loads,
every lock a build stage installs must exist and be hash-pinned, and every COPY source exists.
"""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
TARGETS = ("policy", "operator", "extender", "inference", "node-agent")


def stage(name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {re.escape(name)}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name!r} in the Dockerfile"
    return match.group(1)


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_runs_an_installed_console_script_as_non_root(target: str) -> None:
    body = stage(target)
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', body, re.M)
    assert entry, f"{target}: no ENTRYPOINT"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry.group(1) in scripts, f"{target}: {entry.group(1)} is not a console script"
    installed = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    assert entry.group(1) in installed, f"{entry.group(1)} is not installed"
    installed[entry.group(1)].load()  # the module and function exist and import
    assert re.search(r"^USER 10001:10001$", body, re.M), f"{target}: must not run as root"


def test_build_stages_install_existing_hash_pinned_locks() -> None:
    locks = set(re.findall(r"-r (requirements/\S+\.lock)", DOCKERFILE))
    assert {"requirements/build.lock", "requirements/policy.lock", "requirements/operator.lock",
            "requirements/extender.lock", "requirements/inference.lock"} <= locks
    for lock in locks:
        text = (ROOT / lock).read_text()
        pins = re.findall(r"^[A-Za-z0-9_.\-\[\]]+==\S+", text, re.M)
        assert pins and text.count("--hash=sha256:") >= len(pins), lock


def test_copy_sources_exist_and_no_weights_are_copied() -> None:
    for src in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, re.M):
        assert (ROOT / src).exists(), src
    assert not re.search(r"\.(safetensors|bin|ckpt)\b", DOCKERFILE)


def test_the_shipped_checkpoint_path_follows_the_python_version() -> None:
    body = stage("policy")
    env = re.search(r"^ENV EAT_POLICY_CHECKPOINT=(\S+)", body, re.M)
    assert env, "the policy image names its shipped checkpoint"
    assert "ARG PYTHON" in body.split("ENV EAT_POLICY_CHECKPOINT")[0]
    python = re.search(r"^ARG PYTHON=(\S+)", DOCKERFILE, re.M)
    assert python
    path = env.group(1).replace("${PYTHON}", python.group(1))
    assert re.fullmatch(r"/opt/eat/lib/python\d+\.\d+/site-packages/eat_policy/checkpoints/[\w.-]+\.pt", path)
    shipped = ROOT / "policy" / path.split("site-packages/")[1]
    assert shipped.is_file()
