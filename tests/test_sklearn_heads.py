"""The heads are scikit-learn estimators by scikit-learn's own checks (``parametrize_with_checks``); the checks a
head fails are listed with the reason, and a check listed but passing fails too (scikit-learn's strict mode)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from probebench.train.heads import HEADS

WHY_CLASS_WEIGHT = ("class_weight takes 'balanced' only (the study's option); the check passes a per-class dict")
WHY_SLOW = ("the study's protocol (Adam, lr 1e-4, batch 32, 100 epochs) does not reach the check's training "
            "accuracy on its unscaled toy data; probebench's own tests check learning on separable data")
WHY_FLOAT32 = ("DINOv2's kNN computes cosine similarities in float32, whose rounding differs by the query batch's "
               "size (about 1e-7, amplified by exp(sim / 0.07)); the check asks for 1e-7")
EXPECTED = {
    "linear": {"check_class_weight_classifiers": WHY_CLASS_WEIGHT, "check_classifiers_train": WHY_SLOW},
    "mlp": {"check_class_weight_classifiers": WHY_CLASS_WEIGHT},
    "study_mlp": {"check_class_weight_classifiers": WHY_CLASS_WEIGHT},
    "logreg": {},
    "knn": {"check_methods_subset_invariance": WHY_FLOAT32},
}


def test_every_head_is_checked():
    assert set(EXPECTED) == set(HEADS)


SMALLER = {"mlp": {"hidden": 32}, "study_mlp": {"epochs": 50}}  # the checks' time; the width 256 is the study's


@parametrize_with_checks([cls(**SMALLER.get(name, {})) for name, cls in HEADS.items()],
                         expected_failed_checks=lambda est: EXPECTED[est.name])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_fit_without_validation_follows_the_stated_rule(name):
    """fit(X, y) alone: string labels come back from predict; the trained heads keep the last epoch, logreg takes
    C = 1 and kNN the first k of its grid."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.array(["benign", "malignant", "normal"])[np.arange(90) % 3]
    x = rng.normal(size=(90, 4)) + 4 * np.eye(3, 4)[np.arange(90) % 3]
    options = {"epochs": 30, "lr": 0.05} if "lr" in HEADS[name].takes else {}
    head = clone(HEADS[name](**options)).fit(x, y)
    assert list(head.classes_) == ["benign", "malignant", "normal"] and head.n_features_in_ == 4
    assert set(head.predict(x)) <= set(y) and head.score(x, y) > 0.9
    if "lr" in HEADS[name].takes:
        assert head.best_epoch_ == 30 and len(head.history_) == 30  # the last epoch, nothing selected
    elif name == "logreg":
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(x, y)
        assert np.allclose(head.predict_proba(x), ref.predict_proba(x), atol=1e-6)
    else:
        assert head.selection_["chosen"]["k"] == 10
