"""``python -m probebench`` (and ``torchrun ... -m probebench finetune ...``)."""

from probebench.cli import app

app()
