"""``python -m probebench`` (and ``torchrun ... -m probebench finetune ...``, where the rank runs unsupervised)."""

from probebench.cli import entry

entry()
