#!/usr/bin/env bash
# Build the separate virtual environment in which benchmarks/least_core.py runs its anchors.
#
#   bash benchmarks/setup_anchors.sh            # creates .venv-bench-pydvl at the repository root
#   COREOPT_BENCH_VENV=/some/path bash benchmarks/setup_anchors.sh
#
# Why a separate environment: pyDVL pins numpy<2 while coreopt's own environment uses numpy 2, so
# the anchors run in a subprocess of their own interpreter (benchmarks/least_core.py talks to it
# through a .npy value table and JSON; it never imports coreopt there).
#
# What goes in:
#   - pyDVL (PyPI `pydvl`): exact and Monte Carlo least core (cvxpy, default solver).
#   - coopgame-py (PyPI `coopgame-py`, imported as `coopgame`): a Rust library for TU games with a
#     least core on explicit value tables. NOTE: the PyPI package named `coopgame` is unrelated
#     (pygame game-building templates); the Rust cooperative-game library is `coopgame-py`.
#   - scipy: scipy.optimize.linprog(method="highs") on the full LP (the "textbook" baseline).
#
# The environment ignores itself in git (a `.gitignore` containing `*` inside it).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${COREOPT_BENCH_VENV:-$ROOT/.venv-bench-pydvl}"
PYTHON="${PYTHON:-python3}"
PYDVL_VERSION="${PYDVL_VERSION:-0.10.0}"
COOPGAME_PY_VERSION="${COOPGAME_PY_VERSION:-0.3.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
printf '*\n' >"$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
    "pydvl==$PYDVL_VERSION" \
    "coopgame-py==$COOPGAME_PY_VERSION" \
    scipy
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for dist in ("pydvl", "coopgame-py", "numpy", "scipy", "cvxpy"):
    print(f"{dist} {md.version(dist)}")
EOF
echo "anchor environment ready: $VENV"
