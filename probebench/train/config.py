"""``TrainConfig``: how a head or a whole network is trained. The study's protocol is stated here once (100 epochs,
Adam, lr 1e-4, batch 32, no weight decay, the epoch with the best validation accuracy kept); the command line,
study files, the demo, ``fit``, ``finetune``, the heads and the loop all start from it, so the defaults cannot
drift apart."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from probebench.errors import ProbebenchError, did_you_mean
from probebench.validate import check_options


@dataclass(frozen=True)
class TrainConfig:
    """The training protocol shared by ``fit`` (heads on cached features) and ``finetune`` (end to end)."""

    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.0
    optimizer: str = "adam"
    select_metric: str = "val_accuracy"  # the epoch kept: best validation accuracy (or lowest val_loss)
    patience: int | None = None  # stop after this many epochs without improvement
    seed: int = 0

    def __post_init__(self):
        check_options(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                      optimizer=self.optimizer, select_metric=self.select_metric, patience=self.patience,
                      seed=self.seed)

    @classmethod
    def of(cls, config: "TrainConfig | None" = None, **overrides) -> "TrainConfig":
        """``config`` (the protocol's defaults when None) with ``overrides`` (field names) applied and checked."""
        unknown = sorted(set(overrides) - set(TRAIN_FIELDS))
        if unknown:
            raise ProbebenchError(f"unknown training option {unknown[0]!r}{did_you_mean(unknown[0], TRAIN_FIELDS)}; "
                                  f"options: {', '.join(TRAIN_FIELDS)}")
        return replace(config or cls(), **overrides)


TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
PROTOCOL = TrainConfig()  # the study's protocol: where every default of a training signature comes from


def split_training(options: dict) -> tuple[dict, dict]:
    """``options`` split into training fields and the rest (feature options, for ``FeatureSpec.of``)."""
    return ({k: v for k, v in options.items() if k in TRAIN_FIELDS},
            {k: v for k, v in options.items() if k not in TRAIN_FIELDS})


def check_fit_options(*, hidden, normalize, standardize, class_weight, seeds, grid, label_fractions, shots, cv,
                      calibrate) -> None:
    """``fit``'s own options, checked before any work (and, from the command line, before any heavy import: the
    head's name is checked where the heads are, ``train.heads``)."""
    check_options(hidden=hidden, normalize=normalize, standardize=standardize, class_weight=class_weight,
                  seeds=seeds, grid=grid, label_fractions=label_fractions, shots=shots, cv=cv, calibrate=calibrate)
    if cv and (label_fractions or shots):
        raise ProbebenchError("--cv cannot be combined with --label-fraction / --shots: a label curve keeps the "
                              "dataset's validation and test splits; run them as two fits")
