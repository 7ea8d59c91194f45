"""Which validation of a run is its best: the rule of ``docs/selection_rule.md``, in one place for the
trainer (which writes ``best.safetensors``) and for ``scripts/compare_runs.py`` (which reads
``validation.csv``).

The higher mean AP over the validation sets wins; two means within :data:`TIE_AP` (0.5 AP) are a tie,
which the lower mean FPR95 breaks. Applied in iteration order, each validation against the best so far.
The guard on shipping (:func:`guard_blockers`, used by ``scripts/make_default_model.py``): a new model
replaces the shipped one only if no set's AP falls more than :data:`GUARD_DROP_AP` (5 AP) below it.
"""

from typing import Iterable, List, Mapping, Optional

__all__ = ["GUARD_DROP_AP", "TIE_AP", "beats", "best_of", "guard_blockers"]

#: mean APs closer than this (as fractions: 0.005 = 0.5 AP) are a tie
TIE_AP = 0.005
#: the most AP (as a fraction) any one set may lose when a new model replaces the shipped one
GUARD_DROP_AP = 0.05


def beats(candidate: Mapping[str, float], incumbent: Optional[Mapping[str, float]]) -> bool:
    """Whether ``candidate`` (``ap``, ``fpr95``) replaces ``incumbent`` as a run's best.

    An incumbent without a known FPR95 (a run resumed from a state of older code) keeps a tie.
    """
    if incumbent is None:
        return True
    gap = candidate["ap"] - incumbent["ap"]
    if abs(gap) <= TIE_AP + 1e-12:  # 1e-12: a gap of exactly 0.5 AP is a tie despite rounding
        fpr95 = incumbent.get("fpr95")
        return fpr95 is not None and candidate["fpr95"] < fpr95
    return gap > 0


def best_of(rows: Iterable[Mapping[str, float]]) -> Optional[Mapping[str, float]]:
    """The best of validations given in iteration order (None for none)."""
    best = None
    for row in rows:
        if beats(row, best):
            best = row
    return best


def guard_blockers(candidate: Mapping[str, float], shipped: Mapping[str, float],
                   max_drop: float = GUARD_DROP_AP) -> List[str]:
    """The sets (of ``{set: AP}``) whose AP would fall more than ``max_drop`` below the shipped model's
    if ``candidate`` replaced it; [] = the guard lets it ship. A set only one side measured blocks
    nothing (it is not a comparison)."""
    return [name for name, ap in shipped.items()
            if name in candidate and candidate[name] < ap - max_drop - 1e-12]
