# Sourced by scripts/test and scripts/bench: a Python virtualenv with pinned requirements,
# (re)installed when it is missing or the requirements file is newer than the last install.
# Usage: ensure_venv <dir> <requirements file> <python module that must import>
ensure_venv() {
  local dir=$1 requirements=$2 module=$3
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
  fi
  if ! "$dir/bin/python" -c "import $module" 2>/dev/null || [ "$requirements" -nt "$dir/.installed" ]; then
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    touch "$dir/.installed"
  fi
}
