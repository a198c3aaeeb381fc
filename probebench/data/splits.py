"""Group-aware, class-stratified, seeded splits, and the check that no group sits in two splits."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from probebench.errors import ProbebenchError

SPLITS = ("train", "val", "test")


def group_labels(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    """Each group's stratification label: its most common class (smallest index on ties)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for label, group in zip(labels.tolist(), groups.tolist()):
        counts[group][label] += 1
    return {g: min(c, key=lambda k: (-c[k], k)) for g, c in counts.items()}


def _allocate(sizes: dict[int, int], total: int) -> dict[int, int]:
    """Split ``total`` held-out groups over classes in proportion to ``sizes`` (largest remainder)."""
    n = sum(sizes.values())
    exact = {k: total * s / n for k, s in sizes.items()}
    alloc = {k: int(np.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - alloc[k]), k))[: total - sum(alloc.values())]:
        alloc[k] += 1
    return alloc


def stratified_group_holdout(labels: np.ndarray, groups: np.ndarray, *, fraction: float | None = None,
                             count: int | None = None, seed: int = 0, stratify: bool = True) -> np.ndarray:
    """Boolean mask of samples held out: whole groups, stratified by group class, seeded.

    ``fraction`` holds out that share of each class's groups (at least one where a class has two or
    more); ``count`` holds out exactly that many groups in total, spread over classes proportionally.
    ``stratify=False`` draws the groups at random from all of them, whatever their class (the study's 8:2 split).
    """
    glabel = group_labels(labels, groups)
    if not stratify:
        glabel = {g: 0 for g in glabel}
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in sorted(glabel):
        by_class[glabel[g]].append(g)
    sizes = {k: len(v) for k, v in by_class.items()}
    if count is not None:
        if not 0 < count < len(glabel):
            raise ProbebenchError(f"cannot hold out {count} of {len(glabel)} groups")
        take = _allocate(sizes, count)
    else:
        take = {k: (max(1, int(round(fraction * s))) if s >= 2 else 0) for k, s in sizes.items()}
    rng = np.random.default_rng(seed)
    held = set()
    for k in sorted(by_class):
        order = rng.permutation(len(by_class[k]))
        held.update(by_class[k][i] for i in order[: take[k]])
    return np.array([g in held for g in groups.tolist()], dtype=bool)


def shared_groups(groups: np.ndarray, splits: np.ndarray) -> dict[str, list[str]]:
    """Groups with samples in more than one split -> their splits (sorted), in sorted group order."""
    seen: dict[str, set] = defaultdict(set)
    for g, s in zip(groups.tolist(), splits.tolist()):
        seen[g].add(s)
    return {g: sorted(seen[g]) for g in sorted(seen) if len(seen[g]) > 1}


def check_disjoint(groups: np.ndarray, splits: np.ndarray, where: str = "") -> None:
    """Fail loudly if any group has samples in two splits."""
    shared = shared_groups(groups, splits)
    bad = list(shared)
    if bad:
        examples = ", ".join(f"{g} ({'/'.join(shared[g])})" for g in bad[:5])
        raise ProbebenchError(
            f"{where}{len(bad)} group(s) sit in more than one split, which would leak between train "
            f"and evaluation: {examples}{' …' if len(bad) > 5 else ''}")


def label_subset(labels: np.ndarray, groups: np.ndarray, *, fraction: float | None = None, shots: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """Boolean mask of the training samples a label budget keeps: whole groups, stratified by group class, nested.

    Each class's groups are put in one seeded random order; ``fraction`` keeps the first ceil(fraction x n) groups of
    every class (at least one), ``shots`` the first groups of each class until they hold ``shots`` samples of it
    (all of them when the class has fewer). The order depends only on the seed, so for one seed every smaller
    budget is inside every larger one, and fractions and shots draw from the same order.
    """
    if (fraction is None) == (shots is None):
        raise ProbebenchError("a label budget is a fraction or a number of shots, exactly one of them")
    if fraction is not None and not 0 < fraction <= 1:
        raise ProbebenchError(f"a label fraction must be in (0, 1], not {fraction}")
    if shots is not None and shots < 1:
        raise ProbebenchError(f"shots must be at least 1, not {shots}")
    glabel = group_labels(labels, groups)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in sorted(glabel):
        by_class[glabel[g]].append(g)
    members = defaultdict(int)  # (group, class) -> samples
    for label, group in zip(labels.tolist(), groups.tolist()):
        members[(group, label)] += 1
    rng = np.random.default_rng([seed, 1729])  # its own stream: the same order for every budget of this seed
    kept = set()
    for k in sorted(by_class):
        order = [by_class[k][i] for i in rng.permutation(len(by_class[k]))]
        if fraction is not None:
            kept.update(order[: max(1, int(np.ceil(fraction * len(order) - 1e-9)))])
            continue
        have = 0
        for g in order:
            if have >= shots:
                break
            kept.add(g)
            have += members[(g, k)]
    return np.array([g in kept for g in groups.tolist()], dtype=bool)


def cv_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Each sample's fold (0..k-1): scikit-learn's ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)``,
    so no group is split and every fold's class mix is as close to the whole's as whole groups allow."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if not 2 <= k <= n_groups:
        raise ProbebenchError(f"{k}-fold cross-validation needs at least {k} groups, and the data has {n_groups}")
    fold = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # "the least populated class has only m members": the folds say it themselves
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[test] = i
    return fold
