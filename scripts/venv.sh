# Sourced by the set-up and check scripts: one way to make an environment and install into it.
#
# torch is pinned in one place, constraints.txt. From the standard package index torch==2.13.0 on Linux x86-64 is
# the CUDA build, which pulls in 15 nvidia-* packages, cuda-toolkit, cuda-bindings, cuda-pathfinder and triton;
# for the CPU-only build set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.

# make_venv DIR: create the virtual environment DIR unless it exists.
make_venv() {
    if [ ! -x "$1/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$1"
        "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    fi
}

# venv_pip DIR ARGS...: pip install ARGS into DIR, quietly, with the constraints.txt pins.
venv_pip() {
    local venv="$1"
    shift
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt "$@"
}

# venv_torch DIR: with TORCH_INDEX_URL set, the pinned torch from that index (else pip takes it with the project).
venv_torch() {
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        venv_pip "$1" torch --index-url "$TORCH_INDEX_URL"
    fi
}
