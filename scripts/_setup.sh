# shellcheck shell=bash
# Shared by scripts/start and scripts/test (sourced, not run): find Python >= 3.11, create .venv, and install
# Sightline with its test tools the first time or when pyproject.toml changed. A re-run with nothing to do
# costs a hash of one file, so both scripts are fast from the second run on.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIGHTLINE_VENV:-$ROOT/.venv}"
cd "$ROOT"

say() { printf 'sightline: %s\n' "$*" >&2; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        if [ -z "$candidate" ] || ! command -v "$candidate" >/dev/null 2>&1; then continue; fi
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# Install (or update) .venv, then compile the translation catalogs if needed.
ensure_venv() {
    install_venv
    compile_catalogs
}

# Install (or update) .venv; the stamp records which pyproject.toml it was installed from.
install_venv() {
    local py stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        if ! py="$(find_python)"; then
            say "Python 3.11 or newer is needed (python3 is: $(python3 --version 2>&1 || echo 'missing'))."
            say "Install it, or point PYTHON at one: PYTHON=/usr/bin/python3.12 $0"
            exit 1
        fi
        say "creating $VENV with $("$py" --version 2>&1)"
        if ! "$py" -m venv --clear "$VENV"; then
            say "could not create a virtualenv; on Debian/Ubuntu: apt-get install python3-venv"
            exit 1
        fi
    fi
    stamp="$VENV/.sightline-installed"
    want="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -x "$VENV/bin/sightline" ]; then
        return 0
    fi
    say "installing Sightline and its dependencies into $VENV (the first time takes a few minutes)"
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "${ROOT}[test]"
    # insightface pulls opencv-python (the GUI build: needs libGL and X11 libraries a server may lack); we
    # use the headless build that pyproject.toml asks for. Both fill the same cv2/ folder, hence the
    # reinstall. The Dockerfile does the same, so tests run against the OpenCV the image ships.
    if "$VENV/bin/python" -m pip show --quiet opencv-python >/dev/null 2>&1; then
        local headless
        headless="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')"
        "$VENV/bin/python" -m pip uninstall --quiet --yes opencv-python
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
            "opencv-python-headless==$headless"
    fi
    printf '%s\n' "$want" >"$stamp"
}

# Compile the bot's translation catalogs (bot/locales/*/LC_MESSAGES/sightline.po -> .mo; the .mo files are not
# in git). Only a catalog whose .po is newer than its .mo is compiled, so a re-run costs a few stat calls. The
# bot would compile a missing or stale catalog in memory anyway (~10 ms each, logged at INFO); this saves that.
compile_catalogs() {
    local po mo
    for po in "$ROOT"/bot/locales/*/LC_MESSAGES/sightline.po; do
        [ -f "$po" ] || continue
        mo="${po%.po}.mo"
        if [ ! -f "$mo" ] || [ "$po" -nt "$mo" ]; then
            "$VENV/bin/pybabel" -q compile -d "$ROOT/bot/locales" -D sightline
            return 0
        fi
    done
}

# Export KEY=VALUE lines of a dotenv file, without overriding what the environment already sets (an
# `export SIGHTLINE_TELEGRAM_TOKEN=...` beats an empty line copied from .env.example). Nothing is evaluated.
load_env_file() {
    local file="$1" line key value
    [ -f "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        case "$line" in '' | '#'*) continue ;; esac
        line="${line#export }"
        key="${line%%=*}"
        [ "$key" != "$line" ] || continue
        key="${key//[[:space:]]/}"
        [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        value="${line#*=}"
        if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
        if [ -z "${!key+set}" ]; then export "$key=$value"; fi
    done <"$file"
}
