"""``finetune``: the unfrozen path, every weight trained end to end, images through the backbone each epoch.

The model is the registry backbone with a new final layer where the study puts it (VGG16
``classifier[6]``, ResNet50 ``fc``, DenseNet121 ``classifier``, a linear layer on the DINOv2 tap).
``freeze_backbone`` trains only that layer the slow way, which must reproduce ``extract`` + ``fit``:
both use the same head initialisation, batch order and loop (``training.py``). Checkpoints
(``last.pt``, ``best.pt``) are written atomically after every epoch; ``resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from probebench.budget import default_workers
from probebench import distributed
from probebench.atomic import atomic_path
from probebench.features.cache import versions
from probebench.data.datasets import check_trainable
from probebench.errors import ProbebenchError
from probebench.features.extract import auto_device
from probebench.features.spec import CACHE_ONLY, FeatureSpec, resolve_job
from probebench.stats.calibration import apply_temperature, bound_warning, fit_temperature
from probebench.train.heads import softmax_proba
from probebench.features.images import ImageDataset, bad_image_error, make_transform
from probebench.stats.metrics import point_metrics
from probebench.features.precision import autocast_dtype
from probebench.features.precision import resolve as resolve_precision
from probebench.progress import make_progress
from probebench.models.extractor import FeatureExtractor
from probebench.train.config import TrainConfig, split_training
from probebench.runs import RunRecord, check_writable, config_hash, identical_run, run_folder, write_run
from probebench.train.loop import LoopState, epoch_batches, make_optimizer, seeded_init, train_loop, val_metrics
from probebench.validate import check_options


BAD_IMAGE_HINT = "remove or fix the file; finetune cannot skip images"


STUDY_QUIRKS = {
    "bn_epoch1": "the model runs in train mode until the first validation and in eval mode ever after (the "
                 "study's train_model calls model.eval() there and never model.train() again): frozen, BatchNorm "
                 "statistics are re-estimated on the training images during epoch 1; fine-tuned (unfrozen), every "
                 "later epoch trains with BatchNorm fixed at its epoch-1 statistics and dropout off",
    "vgg_features_only": "frozen VGG16 freezes only vgg16.features, as the study's choose_model does: fc6 and fc7 "
                         "are trained too",
}


class Classifier(nn.Module):
    """Backbone + new final layer. Frozen: the backbone stays in eval mode without gradients, unless one of the
    study's ``quirks`` is asked for (see ``STUDY_QUIRKS``)."""

    def __init__(self, extractor: FeatureExtractor, n_classes: int, seed: int, freeze_backbone: bool,
                 quirks: tuple[str, ...] = (), head: str = "linear"):
        super().__init__()
        self.extractor = extractor
        self.quirks = tuple(quirks)
        self._validated = False  # bn_epoch1: the first eval() ends train mode for good
        if "vgg_features_only" in self.quirks:
            if extractor.config.arch.get("builder") != "vgg16" or not freeze_backbone:
                raise ProbebenchError("--study-vgg-features-only applies to frozen VGG16 only "
                                      "(finetune --model vgg16 --freeze-backbone)")
            freeze_backbone = False  # torchvision's own forward, with vgg16.features frozen below
        self.freeze_backbone = freeze_backbone
        self.head_name = extractor.config.family.finetune_layer(extractor.config)
        if head == "study_mlp":  # the study's DINOv2 head: 256 hidden units on the ImageNet logits
            if self.head_name:
                raise ProbebenchError("--head study_mlp is the study's DINOv2 head; for the CNNs the study replaced "
                                      f"{self.head_name} by one linear layer (--head linear)")
            layer = seeded_init(lambda: nn.Sequential(nn.Linear(extractor.feature_dim, 256), nn.ReLU(),
                                                      nn.Linear(256, n_classes)), seed)  # as StudyMLPHead's
        else:
            layer = seeded_init(lambda: nn.Linear(extractor.feature_dim, n_classes), seed)  # as LinearHead's
        if self.head_name:
            parent_name, _, child = self.head_name.rpartition(".")
            parent = extractor.backbone.get_submodule(parent_name) if parent_name else extractor.backbone
            setattr(parent, child, layer)
        else:
            self.head = layer
        if freeze_backbone:
            for name, p in extractor.named_parameters():
                p.requires_grad_(self.head_name is not None and name.startswith(f"backbone.{self.head_name}."))
        if "vgg_features_only" in self.quirks:
            for p in extractor.backbone.features.parameters():
                p.requires_grad_(False)

    def head_layer(self) -> nn.Module:
        return self.extractor.backbone.get_submodule(self.head_name) if self.head_name else self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.extractor(x)
            return self.head_layer()(features)
        if self.head_name:  # torchvision's own forward, with the replaced layer
            return self.extractor.backbone(x)
        return self.head(self.extractor(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self._validated = True
        if self.freeze_backbone and not ("bn_epoch1" in self.quirks and mode and not self._validated):
            self.extractor.eval()
        if "bn_epoch1" in self.quirks and self._validated:  # the study never calls model.train() again
            super().train(False)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.freeze_backbone:
            return list(self.head_layer().parameters())
        return [p for p in self.parameters() if p.requires_grad]


def _save_atomic(obj: dict, path: Path) -> None:
    """A kill or a full disk mid-write never leaves a corrupt checkpoint (see ``atomic``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _differences(saved: dict, now: dict) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]


def _resume_from(path: Path, numbers: dict, resume: bool | str) -> dict | None:
    """The checkpoint to continue from. ``resume=True`` (``--resume``): it must exist, load and match the settings.
    ``"auto"`` (the study runner): continue when it does, otherwise say why and start from epoch 1."""
    from probebench.models.weights import safe_load

    strict = resume is True
    if not path.is_file():
        if strict:
            raise ProbebenchError(f"nothing to resume: no checkpoint at {path}")
        return None
    try:
        checkpoint = safe_load(path, "checkpoint", "delete it, or run without --resume to start from epoch 1")
        if not isinstance(checkpoint, dict) or "numbers" not in checkpoint or "loop" not in checkpoint:
            raise ProbebenchError(f"checkpoint {path} is not a probebench fine-tune checkpoint; delete it, or run "
                                  "without --resume to start from epoch 1")
    except ProbebenchError as exc:
        if strict:
            raise
        sys.stderr.write(f"note: {exc}; starting from epoch 1\n")
        return None
    if checkpoint["numbers"] != numbers:
        if strict:
            raise ProbebenchError("--resume: the checkpoint was made with other settings:\n  "
                                  + "\n  ".join(_differences(checkpoint["numbers"], numbers)))
        return None  # another configuration's work: this run starts afresh
    if not strict:
        sys.stderr.write(f"note: resuming {path.parent} after epoch {checkpoint['loop']['epoch']}\n")
    return checkpoint


def _refuse(spec: FeatureSpec, head: str, train: TrainConfig, accumulate: int, precision: str, workers, device,
            grad_checkpointing: bool, calibrate, study_quirks, freeze_backbone: bool) -> None:
    """Every option checked before any work: values, the study's quirks, and the cache-only feature options."""
    check_options(finetune_head=head, accumulate=accumulate, finetune_precision=precision, workers=workers,
                  device=device, grad_checkpointing=grad_checkpointing, calibrate=calibrate)
    unknown = set(study_quirks) - set(STUDY_QUIRKS)
    if unknown:
        raise ProbebenchError(f"unknown study quirks {sorted(unknown)}; known: {', '.join(STUDY_QUIRKS)}")
    if "vgg_features_only" in study_quirks and not freeze_backbone:
        raise ProbebenchError("--study-vgg-features-only concerns the study's frozen VGG16: add --freeze-backbone")
    if train.batch_size % accumulate:
        raise ProbebenchError(f"--accumulate {accumulate} must divide --batch-size {train.batch_size}")
    cache_only = [f"--{k.replace('_', '-')}" for k in CACHE_ONLY if getattr(spec, k) != getattr(FeatureSpec, k)]
    if cache_only:
        raise ProbebenchError(f"{', '.join(cache_only)} describe(s) the feature cache, not fine-tuning (its "
                              "precision is --precision, a runtime choice)")


def _numbers(job, mode: str, head: str, train: TrainConfig, accumulate: int, prec: str, study_quirks,
             calibrate) -> dict:
    """Everything that changes a fine-tuned run's numbers: its identity, and what a resume must match exactly."""
    req = job.request
    return {
        "mode": mode, "path": "end-to-end", "dataset": job.manifest.dataset, "model": req.model, "head": head,
        "tap": req.tap, "weights_sha256": req.weights["sha256"], "preprocessing": req.preprocessing,
        "manifest_hash": req.manifest_hash, "epochs": train.epochs, "lr": train.lr, "batch_size": train.batch_size,
        "weight_decay": train.weight_decay, "optimizer": train.optimizer, "select_metric": train.select_metric,
        "patience": train.patience, "accumulate": accumulate, "precision": prec, "seed": train.seed,
        **({"head_sha256": req.weights["head_sha256"]} if req.weights.get("head_sha256") else {}),
        **({"study_quirks": sorted(study_quirks)} if study_quirks else {}),
        **({"calibrate": calibrate} if calibrate else {})}


class EndToEnd:
    """One fine-tuning run on one device (one rank of a distributed run): the model, its optimiser and the batches
    of each split. ``train_loop`` calls ``train_batches``, ``step`` and ``validate``; checkpoints after each epoch."""

    def __init__(self, job, net: Classifier, dev: torch.device, prec: str, train: TrainConfig, accumulate: int,
                 workers: int | None, checkpoint: dict | None, numbers: dict, work: Path, ranks: tuple[int, int],
                 on_epoch=None):
        self.manifest, self.net, self.dev, self.train, self.accumulate = job.manifest, net, dev, train, accumulate
        self.numbers, self.work, self.on_epoch = numbers, work, on_epoch
        self.rank, self.world = ranks
        self.channels_last = dev.type == "cuda" and job.config.family.channels_last
        self.opt = make_optimizer(net.trainable_parameters(), train.optimizer, train.lr, train.weight_decay)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=prec == "fp16")
        self.state = LoopState()
        if checkpoint is not None:
            net.load_state_dict(checkpoint["model"])
            self.opt.load_state_dict(checkpoint["optimizer"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = LoopState(**checkpoint["loop"])
            net._validated = self.state.epoch >= 1  # bn_epoch1: train mode ended at the first validation
            torch.set_rng_state(checkpoint["rng"]["torch"])
        self.trained = nn.parallel.DistributedDataParallel(net) if self.world > 1 else net
        splits = self.manifest.splits
        self.train_idx, self.val_idx, self.test_idx = (np.flatnonzero(splits == s) for s in ("train", "val", "test"))
        self.labels = torch.as_tensor(self.manifest.labels)
        pre = job.config.preprocessing
        self.images = ImageDataset(self.manifest.paths, make_transform(pre), pre.crop, rules=self.manifest.pixels)
        self.workers = workers if workers is not None else default_workers()
        self.autocast = autocast_dtype(prec)
        self.global_batch = 0  # size of the global batch whose shard this rank is training on
        self.bar, self.epoch_task = None, None

    def loader(self, batches) -> DataLoader:
        return DataLoader(self.images, batch_sampler=batches, num_workers=self.workers,
                          pin_memory=self.dev.type == "cuda")

    def checked(self, batch):
        x, idx, ok, errors = batch
        if not bool(ok.all()):
            i = int(np.flatnonzero(~ok.numpy())[0])
            raise bad_image_error(self.manifest.paths[int(idx[i])], errors[i], BAD_IMAGE_HINT)
        x = x.to(self.dev, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx].to(self.dev)

    def forward(self, x, module=None):
        with torch.autocast(self.dev.type, dtype=self.autocast, enabled=self.autocast is not None):
            return (module or self.net)(x).float()

    def train_batches(self, epoch):
        rank, world = self.rank, self.world
        batches = [self.train_idx[b] for b in epoch_batches(len(self.train_idx), self.train.batch_size,
                                                            self.train.seed, epoch)]
        shards = [b[rank::world] if len(b[rank::world]) else b[:1] for b in batches]  # never an empty shard
        for batch, shard in zip(batches, self.loader([s.tolist() for s in shards])):
            self.global_batch = len(batch)
            x, y = self.checked(shard)
            yield x, y if len(batch[rank::world]) else y[:0]  # an empty shard keeps its place, weight 0

    def step(self, m, x, y, optim):
        optim.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
        correct = torch.zeros((), dtype=torch.long, device=self.dev)
        chunks = list(zip(x.chunk(self.accumulate), y.chunk(self.accumulate))) if len(y) else [(x, y)]
        for i, (xs, ys) in enumerate(chunks):
            sync = self.world == 1 or i == len(chunks) - 1  # all-reduce gradients once per optimiser step
            with (contextlib.nullcontext() if sync else self.trained.no_sync()):
                logits = self.forward(xs, self.trained)
                if len(ys):  # mean over the global batch, whatever the shard and micro-batch sizes
                    loss = nn.functional.cross_entropy(logits, ys) * (len(ys) * self.world / self.global_batch)
                else:
                    loss = logits.sum() * 0.0
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().double() * self.global_batch / self.world
            correct += (logits.detach().argmax(1) == ys).sum() if len(ys) else 0
        self.scaler.step(optim)
        self.scaler.update()
        loss_sum, correct, seen = distributed.all_sum(loss_sum.cpu(), correct.cpu(), torch.tensor(len(y)))
        self.bar.update(self.epoch_task, advance=int(seen))
        return loss_sum, correct.long(), int(seen)

    @torch.no_grad()
    def predict(self, indices) -> torch.Tensor:
        size = 2 * self.train.batch_size
        batches = [indices[i:i + size].tolist() for i in range(0, len(indices), size)]
        self.net.eval()
        return (torch.cat([self.forward(self.checked(b)[0]).cpu() for b in self.loader(batches)]) if batches
                else torch.empty(0))

    def validate(self, m):
        return val_metrics(self.predict(self.val_idx), self.labels[self.val_idx])

    def after_epoch(self, s: LoopState, row: dict):
        if self.rank == 0:  # only rank 0 writes
            snapshot = {"numbers": self.numbers, "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                        "scaler": self.scaler.state_dict(), "loop": asdict(s),
                        "rng": {"torch": torch.get_rng_state()}}
            if row.get("best"):
                _save_atomic({"model": s.best_state, "epoch": s.best_epoch, "metric": s.best_metric},
                             self.work / "best.pt")
            _save_atomic(snapshot, self.work / "last.pt")
        self.bar.update(self.epoch_task, info=f"loss {row['train_loss']:.4f} · this epoch's val acc {row['val_accuracy']:.3f}")
        if self.on_epoch is not None:
            self.on_epoch(s, row)
        self.new_epoch_bar(s.epoch + 1)

    def new_epoch_bar(self, epoch: int) -> None:
        if epoch <= self.train.epochs:
            self.epoch_task = self.bar.add_task(f"{self.numbers['mode']} {self.numbers['model']} × "
                                                f"{self.manifest.dataset} epoch {epoch}/{self.train.epochs}",
                                                total=len(self.train_idx), info="")

    def run(self, progress: bool) -> LoopState:
        """Train to the end (or early stop) and load the kept epoch's weights."""
        t = self.train
        self.bar = make_progress(progress and self.rank == 0)
        try:
            with self.bar:
                self.new_epoch_bar(self.state.epoch + 1)
                self.state = train_loop(self.net, self.opt, self.train_batches, self.validate, epochs=t.epochs,
                                        seed=t.seed, step=self.step, select=t.select_metric, patience=t.patience,
                                        state=self.state, on_epoch=self.after_epoch)
        except torch.cuda.OutOfMemoryError as exc:
            raise ProbebenchError(f"out of GPU memory with --batch-size {t.batch_size}: use a smaller micro-batch "
                                  "with --accumulate N (same effective batch), or --grad-checkpointing for the ViTs, "
                                  f"or --precision bf16/fp16 ({exc})") from exc
        self.net.load_state_dict(self.state.best_state)
        return self.state


def _prepare_work(base: Path, numbers: dict, resume: bool | str, main: bool) -> tuple[Path, dict | None]:
    """The in-progress folder and the checkpoint to resume from (None: start afresh, the folder emptied)."""
    work = base / "_inprogress"
    checkpoint = _resume_from(work / "last.pt", numbers, resume) if resume else None
    if main and checkpoint is None and work.exists():
        shutil.rmtree(work)
    if main:
        work.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    return work, checkpoint


def _write(runs_dir, e: EndToEnd, job, head: str, calibrate, grad_checkpointing: bool, digest: str,
           seconds: float) -> Path:
    """Test predictions (temperature-scaled on validation when asked), the record and the metrics, as one run."""
    manifest, numbers, dev = e.manifest, e.numbers, e.dev
    proba = softmax_proba(e.predict(e.test_idx))
    y_test = manifest.labels[e.test_idx]
    calibration = None
    if calibrate == "temperature":  # fitted on validation only, then applied to the test probabilities
        calibration = fit_temperature(softmax_proba(e.predict(e.val_idx)), manifest.labels[e.val_idx])
        sys.stderr.write(bound_warning(calibration))
        proba = apply_temperature(proba, calibration["temperature"])
    if not np.isfinite(proba).all():
        raise ProbebenchError(f"fine-tuned {numbers['model']} on {manifest.dataset} gives non-finite probabilities: "
                              "training diverged; lower --lr or use --precision fp32; no run was written")
    shared = {"mode", "path", "dataset", "model", "head", "tap", "preprocessing", "manifest_hash", "seed"}
    record = RunRecord(
        **{k: numbers[k] for k in shared}, classes=manifest.classes, weights=job.request.weights,
        n={"train": len(e.train_idx), "val": len(e.val_idx), "test": len(e.test_idx)}, counts=manifest.counts(),
        head_label=head, head_params={k: numbers[k] for k in ("epochs", "lr", "batch_size", "weight_decay",
                                                              "optimizer", "seed", "accumulate")},
        group_kind=manifest.group_kind, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        junk_files=len(manifest.junk), versions=versions(),
        details={**{k: v for k, v in numbers.items() if k not in shared},
                 "grad_checkpointing": grad_checkpointing, "world_size": e.world,
                 **({"calibration": calibration} if calibration else {})})
    state = e.state
    best_row = next((r for r in state.history if r.get("epoch") == state.best_epoch), {})
    metrics = {"test": point_metrics(y_test, proba.argmax(1), len(manifest.classes), proba),
               "best_epoch": state.best_epoch, "val_accuracy": best_row.get("val_accuracy"),
               "best_" + numbers["select_metric"]: state.best_metric, "epochs_run": state.epoch,
               "train_seconds": round(seconds, 3),
               "peak_memory_gib": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda"
                                   else None)}
    return write_run(runs_dir, record, sample_ids=manifest.sample_ids[e.test_idx], groups=manifest.groups[e.test_idx],
                     y_true=y_test, proba=proba, history=state.history, metrics=metrics, run_suffix=digest)


def finetune(features: FeatureSpec | str, dataset: str, *, data_root=None, runs_dir: str | Path = "runs",
             head: str = "linear", train: TrainConfig | None = None, freeze_backbone: bool = False,
             accumulate: int = 1, grad_checkpointing: bool = False, precision: str = "auto", device: str = "auto",
             workers: int | None = None, resume: bool | str = False, force: bool = False,
             progress: bool = True, on_epoch=None, on_run=None, existing: str = "error",
             study_quirks: tuple[str, ...] = (), calibrate: str | None = None, **options) -> Path | None:
    """Train a model end to end on ``dataset`` (or only its new layer with ``freeze_backbone``); returns the run.

    ``features`` (a spec, or a model name plus the spec's options) says what the model sees: weights, tap,
    preprocessing, validation carving. ``train`` is the training protocol (``TrainConfig``; the study's when
    None), whose fields may also be given as keywords (``epochs=5``). ``precision`` here is the training's own
    (``auto`` picks per device); the options that exist for the cache only (store dtype, forward precision,
    channels-last, draft) are refused.

    ``calibrate="temperature"``: a temperature fitted on the validation split is applied to the test probabilities
    (as ``fit``'s), and recorded in the run.

    An identical complete run is an error unless ``force`` (run again) or ``existing="reuse"`` (return it).
    ``on_run(path)`` is called once a new run is written (as ``fit``'s; ``--track`` logs it there).
    """
    overrides, options = split_training(options)
    train = TrainConfig.of(train, **overrides)
    spec = FeatureSpec.of(features, **options)
    _refuse(spec, head, train, accumulate, precision, workers, device, grad_checkpointing, calibrate, study_quirks,
            freeze_backbone)
    check_writable(runs_dir)
    job = resolve_job(spec, dataset, data_root=data_root)
    rank, world = distributed.setup()
    dev = auto_device(distributed.rank_device(device))
    prec = resolve_precision(precision, dev)
    manifest = job.manifest
    check_trainable(manifest.dataset, manifest.classes, manifest.counts())
    mode = "frozen" if freeze_backbone else "unfrozen"
    numbers = _numbers(job, mode, head, train, accumulate, prec, study_quirks, calibrate)
    base = run_folder(runs_dir, manifest.dataset, spec.model, mode)
    digest = config_hash(numbers)
    done = None if force else identical_run(base, digest)
    if done is not None:
        if existing == "reuse":  # the study runner: an identical complete run counts as done
            return done
        raise ProbebenchError(f"this run is already complete: {done} (use --force to run it again)")
    work, checkpoint = _prepare_work(base, numbers, resume, rank == 0)
    extractor = job.create_model()
    if grad_checkpointing and hasattr(extractor.backbone, "set_grad_checkpointing"):  # DINOv2 and timm models
        extractor.backbone.set_grad_checkpointing(True)
    net = Classifier(extractor, len(manifest.classes), train.seed, freeze_backbone, tuple(study_quirks), head).to(dev)
    if dev.type == "cuda" and extractor.config.family.channels_last:
        net = net.to(memory_format=torch.channels_last)
    e = EndToEnd(job, net, dev, prec, train, accumulate, workers, checkpoint, numbers, work, (rank, world), on_epoch)
    start = time.perf_counter()
    e.run(progress)
    if rank != 0:
        distributed.barrier()
        distributed.cleanup()
        return None
    run = _write(runs_dir, e, job, head, calibrate, grad_checkpointing, digest, time.perf_counter() - start)
    shutil.rmtree(work)
    if on_run is not None:
        on_run(run)
    distributed.barrier()
    distributed.cleanup()
    return run
