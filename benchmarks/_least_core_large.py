"""Issue 17 tables of ``benchmarks/least_core.py --issue17``: large n audited exactly, any n, and
the per-call overhead of exact mode with a plain Python function.

1. **n = 40, 5,000 calls** (``--quick``: n = 24, 1,000 calls), coverage and weighted-voting games
   (seed 0): e* computed exactly by constraint generation with an exact MILP separation on the
   true game (``_least_core_milp``), and every payoff's TRUE requirement ``max_S v(S) - x(S)``
   audited by the same MILP. coreopt ``least_core`` (default options) against pyDVL's Monte Carlo
   least core and coopgame-py's ``sampled_least_core`` given the calls coreopt used.
   ``--game-seeds 0,1,2`` runs each family's games of those seeds (default: seed 0).
2. **Any n**: coreopt alone at n = 100, 200, 1,000 (``--quick``: 100) on the same families with
   3,000 calls: time, solver time per value call, the certified lower bound ``epsilon`` and the
   payoff's requirement audited by the MILP (``(audit - epsilon) / |epsilon|`` bounds the payoff's
   excess over e* from above).
3. **Per-call overhead**: exact mode with a plain per-coalition Python function
   (``overhead_value``) at n = 16 and 20, against coopgame-py's ``Game.from_function`` plus its
   ``least_core`` (imputations, no tie-break on either side), interleaved, best of two.
4. **Scarce budgets on games whose answer can be audited** (session 6): weighted voting at
   n = 64, 80, 100, 200 (seeds 0-2; ``--quick``: n = 64, seed 0), e* and every requirement by the
   exact MILP, the equal split and the anchors at the same calls beside coreopt; glove games
   (e* = 0) at 10, 20 and 30 calls per player and majority(101) (e* = 1 - 51/101) at 300, 600 and
   1,000 calls, audited by sorting (for given counts of each kind of player, the cheapest
   coalition takes the cheapest players of each kind).

Run from the repository root: ``python benchmarks/least_core.py --issue17 [--quick]
[--skip-anchors]``; prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _least_core_milp import coverage_separator, exact_epsilon, voting_separator


def _structure(family: str, n: int, seed: int = 0) -> dict[str, Any]:
    from coreopt.game import games

    if family == "coverage":
        covers, weight = games.coverage_structure(n, seed=seed)
        return {"family": family, "covers": covers.tolist(), "weight": weight.tolist()}
    w, quota = games.random_voting_weights(n, seed)
    return {"family": family, "weights": w.tolist(), "quota": quota}


def _separator(family: str, n: int, value_of: Any, seed: int = 0) -> Any:
    from coreopt.game import games

    if family == "coverage":
        return coverage_separator(*games.coverage_structure(n, seed=seed), value_of)
    return voting_separator(*games.random_voting_weights(n, seed), value_of)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def issue17_main(argv: list[str]) -> int:
    """Print the four tables (see the module docstring)."""
    from least_core import DEFAULT_VENV, AnchorWorker, overhead_value

    import coreopt
    from coreopt.game.games import BENCHMARK_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-anchors", action="store_true")
    parser.add_argument("--anchor-python", default=None)
    parser.add_argument("--tables", default="1,2,3,4", help="which tables, e.g. 1,3")
    parser.add_argument(
        "--game-seeds", default="0", help="table 1: game seeds of both families, e.g. 0,1,2"
    )
    args = parser.parse_args(argv)
    which = {int(t) for t in args.tables.split(",")}
    n40, budget = (24, 1000) if args.quick else (40, 5000)
    any_sizes = (100,) if args.quick else (100, 200, 1000)
    worker = None
    tmp = tempfile.TemporaryDirectory(prefix="coreopt-issue17-")
    if not args.skip_anchors:
        python = Path(
            args.anchor_python
            or os.environ.get("COREOPT_BENCH_VENV", str(DEFAULT_VENV)) + "/bin/python"
        )
        if python.exists():
            worker = AnchorWorker(python, Path(tmp.name) / "worker.log")
    load0 = os.getloadavg()[0]
    out: list[str] = []

    if 1 in which:
        out += [
            f"### n = {n40}, {budget} value calls: the payoff's true requirement "
            "(exact MILP audit)",
            "",
            _row(["game", "solver", "calls", "requirement", "e* (exact)", "over e*", "seconds"]),
            _row(["---"] * 7),
        ]
        game_seeds = [int(g) for g in args.game_seeds.split(",")]
        for family, seed in [(f, g) for f in ("coverage", "voting") for g in game_seeds]:
            game = BENCHMARK_FAMILIES[family](n40, seed)
            value_of = game.value_of_mask
            sep = _separator(family, n40, value_of, seed)
            t0 = time.perf_counter()
            e_star, rounds = exact_epsilon(n40, value_of((1 << n40) - 1), value_of, sep)
            t_e = time.perf_counter() - t0
            label = f"{family} n={n40}" + (f" seed {seed}" if seed else "")
            t0 = time.perf_counter()
            res = coreopt.least_core(game, n40, budget=budget, mode="approximate", progress=False)
            secs = time.perf_counter() - t0
            audit = sep(res.x)[0]
            per_call = 1e3 * (secs - res.timings["value"]) / res.value_calls
            out.append(
                _row(
                    [
                        label,
                        "coreopt least_core (default)",
                        str(res.value_calls),
                        f"{audit:.6g}",
                        f"{e_star:.6g}",
                        f"{(audit - e_star) / abs(e_star):+.2%}",
                        f"{secs:.1f} (solver {per_call:.2f} ms/call)",
                    ]
                )
            )
            calls = res.value_calls
            struct = {**_structure(family, n40, seed), "n": n40, "seed": seed}
            for name, job in (
                ("pyDVL Monte Carlo least core", {"job": "pydvl_structured", "samples": calls}),
                (
                    "coopgame-py sampled_least_core",
                    {"job": "coopgame_structured", "pairs": max(1, (calls - n40 - 1) // 2)},
                ),
            ):
                if worker is None:
                    out.append(
                        _row([label, name, "-", "skipped (no anchor environment)", "", "", ""])
                    )
                    continue
                ans = worker.request({**struct, **job}, timeout=1800)
                if "error" in ans:
                    out.append(_row([label, name, "-", ans["error"][:80], "", "", ""]))
                    continue
                x = np.asarray(ans["x"], dtype=np.float64)
                a = sep(x)[0]
                out.append(
                    _row(
                        [
                            label,
                            name,
                            str(ans.get("calls", "?")),
                            f"{a:.6g}",
                            f"{e_star:.6g}",
                            f"{(a - e_star) / abs(e_star):+.2%}",
                            f"{ans['seconds']:.1f}",
                        ]
                    )
                )
            print(
                f"[issue17] {label}: e* {e_star:.6g} ({rounds} MILP rounds, {t_e:.0f} s)",
                file=sys.stderr,
            )
        out.append("")

    if 2 in which:
        out += [
            "### Any n: coreopt alone, 3,000 value calls, payoff audited by the exact MILP",
            "",
            _row(
                [
                    "game",
                    "calls",
                    "seconds",
                    "solver ms/call",
                    "epsilon (lower bound)",
                    "requirement (audit)",
                    "(audit - eps)/|eps|",
                ]
            ),
            _row(["---"] * 7),
        ]
        for n in any_sizes:
            for family in ("coverage", "voting"):
                game = BENCHMARK_FAMILIES[family](n, 0)
                sep = _separator(family, n, game.value_of_mask)
                t0 = time.perf_counter()
                res = coreopt.least_core(game, n, budget=3000, mode="approximate", progress=False)
                secs = time.perf_counter() - t0
                audit = sep(res.x)[0]
                out.append(
                    _row(
                        [
                            f"{family} n={n}",
                            str(res.value_calls),
                            f"{secs:.1f}",
                            f"{1e3 * (secs - res.timings['value']) / res.value_calls:.2f}",
                            f"{res.epsilon:.6g}",
                            f"{audit:.6g}",
                            f"{(audit - res.epsilon) / abs(res.epsilon):+.2%}",
                        ]
                    )
                )
        out.append("")

    if 3 in which:
        out += [
            "### Exact mode with a plain Python function: per-call cost against coopgame-py",
            "",
            _row(
                [
                    "n",
                    "calls",
                    "coreopt s",
                    "coreopt µs/call",
                    "coopgame-py s",
                    "coopgame µs/call",
                    "coreopt / coopgame",
                ]
            ),
            _row(["---"] * 7),
        ]
        try:
            import coopgame
        except ImportError:
            coopgame = None
        for n in (16, 20):
            best_c = best_g = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                coreopt.least_core(
                    overhead_value, n, mode="exact", tie_break=None, imputation=True, progress=False
                )
                best_c = min(best_c, time.perf_counter() - t0)
                if worker is not None:
                    ans = worker.request({"job": "coopgame_function", "n": n}, timeout=600)
                    if "error" not in ans:
                        best_g = min(best_g, ans["seconds"])
                elif coopgame is not None:  # installed here (the bench extra): run it in-process
                    t0 = time.perf_counter()
                    coopgame.least_core(coopgame.Game.from_function(n, overhead_value))
                    best_g = min(best_g, time.perf_counter() - t0)
            calls = (1 << n) - 1
            g = f"{best_g:.2f}" if best_g < float("inf") else "skipped"
            gu = f"{1e6 * best_g / calls:.2f}" if best_g < float("inf") else "-"
            ratio = f"{best_c / best_g:.2f}x" if best_g < float("inf") else "-"
            out.append(
                _row(
                    [
                        str(n),
                        str(calls),
                        f"{best_c:.2f}",
                        f"{1e6 * best_c / calls:.2f}",
                        g,
                        gu,
                        ratio,
                    ]
                )
            )
        out.append("")

    if 4 in which:
        out += _scarce_table(args.quick, worker)

    if worker is not None:
        worker.close()
    tmp.cleanup()
    out.append(
        f"Machine: CPU, {os.cpu_count()} cores, shared with other jobs (1-minute load average "
        f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); BLAS threads "
        f"{os.environ.get('OMP_NUM_THREADS', '?')}."
    )
    print("\n".join(out))
    return 0


def glove_requirement(left: int, x: np.ndarray) -> float:
    """Exact ``max over proper S of min(#left, #right) - x(S)`` of ``glove(left, n - left)``."""
    n = x.shape[0]
    a = np.concatenate([[0.0], np.cumsum(np.sort(x[:left]))])
    b = np.concatenate([[0.0], np.cumsum(np.sort(x[left:]))])
    return max(
        min(i, j) - a[i] - b[j]
        for i in range(left + 1)
        for j in range(n - left + 1)
        if 0 < i + j < n
    )


def majority_requirement(x: np.ndarray) -> float:
    """Exact ``max over proper S of [|S| >= n // 2 + 1] - x(S)`` of ``majority(n)``."""
    n = x.shape[0]
    cheapest = np.cumsum(np.sort(x))[: n - 1]
    sizes = np.arange(1, n)
    return float(np.max((sizes >= n // 2 + 1).astype(float) - cheapest))


def _scarce_table(quick: bool, worker: Any) -> list[str]:
    """Table 4 (see the module docstring)."""
    import coreopt
    from coreopt.game import games

    out = [
        "### Scarce budgets: the payoff's true requirement on games whose answer can be audited",
        "",
        _row(
            [
                "game",
                "calls",
                "coreopt",
                "relaxation",
                "e*",
                "equal split",
                "pyDVL Monte Carlo",
                "coopgame-py sampled",
                "seconds",
            ]
        ),
        _row(["---"] * 9),
    ]
    voting = [(64, 2000), (80, 3000), (100, 3000), (200, 3000)]
    for n, calls in voting[:1] if quick else voting:
        for seed in (0,) if quick else (0, 1, 2):
            game = games.random_weighted_voting(n, seed)
            value_of = game.value_of_mask
            sep = _separator("voting", n, value_of, seed)
            e_star = exact_epsilon(n, value_of((1 << n) - 1), value_of, sep)[0]
            t0 = time.perf_counter()
            res = coreopt.least_core(game, n, budget=calls, mode="approximate", progress=False)
            secs = time.perf_counter() - t0
            cells = [
                f"voting n={n} seed {seed}",
                str(res.value_calls),
                f"**{sep(res.x)[0]:.4g}**",
                f"{res.relaxation:.3g}",
                f"{e_star:.4g}",
                f"{sep(np.full(n, 1.0 / n))[0]:.4g}",
            ]
            struct = {**_structure("voting", n, seed), "n": n, "seed": seed}
            for job in (
                {"job": "pydvl_structured", "samples": calls},
                {"job": "coopgame_structured", "pairs": max(1, (calls - n - 1) // 2)},
            ):
                if worker is None:
                    cells.append("skipped")
                    continue
                ans = worker.request({**struct, **job}, timeout=1800)
                if "error" in ans:
                    cells.append(ans["error"][:40])
                    continue
                x = np.asarray(ans["x"], dtype=np.float64)
                cells.append(f"{sep(x)[0]:.4g} ({ans.get('calls', '?')} calls)")
            out.append(_row([*cells, f"{secs:.1f}"]))
    gloves = [(35, 45)] if quick else [(40, 60), (30, 70), (45, 55), (35, 45)]
    for left, right in gloves:
        n = left + right
        for per in (10, 20, 30):
            t0 = time.perf_counter()
            res = coreopt.least_core(
                games.glove(left, right), n, budget=per * n, mode="approximate", progress=False
            )
            secs = time.perf_counter() - t0
            equal = glove_requirement(left, np.full(n, left / n))
            out.append(
                _row(
                    [
                        f"glove({left}, {right})",
                        str(res.value_calls),
                        f"**{glove_requirement(left, res.x):.3g}**",
                        f"{res.relaxation:.3g}",
                        "0",
                        f"{equal:.3g}",
                        "-",
                        "-",
                        f"{secs:.1f}",
                    ]
                )
            )
    n = 101
    for calls in (300,) if quick else (300, 600, 1000):
        t0 = time.perf_counter()
        res = coreopt.least_core(
            games.majority(n), n, budget=calls, mode="approximate", progress=False
        )
        secs = time.perf_counter() - t0
        out.append(
            _row(
                [
                    "majority(101)",
                    str(res.value_calls),
                    f"**{majority_requirement(res.x):.4g}**",
                    f"{res.relaxation:.3g}",
                    f"{1 - 51 / 101:.4g}",
                    f"{majority_requirement(np.full(n, 1.0 / n)):.4g}",
                    "-",
                    "-",
                    f"{secs:.1f}",
                ]
            )
        )
    out.append("")
    return out
