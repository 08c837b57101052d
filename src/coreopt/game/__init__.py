"""Cooperative games and least-core credit assignment (HiGHS LPs, constraint generation)."""

from coreopt.game import games
from coreopt.game.checkpoint import SolveTerminated
from coreopt.game.coalitions import Players
from coreopt.game.exact import exact_least_core
from coreopt.game.games import Game
from coreopt.game.lp import InfeasibleGameError, LeastCoreLP, LPSolution
from coreopt.game.oracle import ValueFunctionError, ValueOracle, VectorizedValue, vectorized
from coreopt.game.result import LeastCoreConfig, LeastCoreResult, RequirementEstimate, RoundInfo
from coreopt.game.solver import aleast_core, least_core

__all__ = [
    "Game",
    "InfeasibleGameError",
    "LPSolution",
    "LeastCoreConfig",
    "LeastCoreLP",
    "LeastCoreResult",
    "Players",
    "RequirementEstimate",
    "RoundInfo",
    "SolveTerminated",
    "ValueFunctionError",
    "ValueOracle",
    "VectorizedValue",
    "aleast_core",
    "exact_least_core",
    "games",
    "least_core",
    "vectorized",
]
