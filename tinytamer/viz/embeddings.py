"""How a model's representation moves while it trains: embeddings of a fixed set of test
images at every checkpoint a run saved, in 2-D, aligned frame to frame.

1. Checkpoints: the ``iter_<N>.pt`` snapshots a stage's Solver wrote (its ``snapshot``
   option, every N updates, and the final one), each loaded into the architecture of its
   stage's saved checkpoint; the model the first drawn stage started from is frame 0.
2. Embeddings: the input of the model's last linear layer (a classifier's head: a ViT's
   class token before its head), or the output of any named module, caught by a hook.
3. Projection: one PCA to two components (scikit-learn) fitted once, on every frame's
   embeddings together, so that no frame is favoured.
4. Alignment: each projected frame is centred and scaled to unit spread, then rotated (or
   reflected) onto the previous aligned frame by the orthogonal Procrustes solution
   (Schoenemann 1966: ``R = argmin ||A R - B||_F`` over orthogonal R, from the SVD of
   ``A^T B``; ``scipy.linalg.orthogonal_procrustes``), so the picture neither spins nor flips.
5. Outliers: Cleanlab's ``OutOfDistribution`` (the mean distance to the k nearest
   neighbours, Kuan & Mueller 2022) on the last frame's embeddings; the 8 lowest scores
   are marked in every frame, with their thumbnails beside the plot.

:func:`draw_embeddings` does it all for a run folder and logs an
:class:`~tinytamer.records.EmbeddingsRecord`; the drawing itself is in
:mod:`tinytamer.viz.animation`.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tinytamer.checkpoint import load_checkpoint
from tinytamer.errors import ModelError, TamerError
from tinytamer.records import EmbeddingsRecord, TrainRecord, log_record, read_records
from tinytamer.rundir import RunDir
from tinytamer.train import snapshot

TOP_OUTLIERS = 8


@dataclass(frozen=True)
class Checkpoint:
    """One frame's weights: a snapshot of stage ``index`` after ``iter`` updates."""

    index: int
    stage: str
    iter: int
    step: int  # updates counted across every drawn stage
    path: Path | None  # None: the model the first drawn stage started from


def find_snapshots(run: RunDir) -> list[Checkpoint]:
    """Every Solver snapshot of the run's finished stages, in training order."""
    out: list[Checkpoint] = []
    offset = 0
    for done in sorted(run.completed(), key=lambda c: c["index"]):
        index, name = done["index"], done["stage"]
        found = sorted(
            run.stage_dir(index, name).glob("*/iter_*.pt"),
            key=lambda p: (p.parent.name, int(re.sub(r"\D", "", p.stem) or 0)),
        )
        last = 0
        for path in found:
            it = int(re.sub(r"\D", "", path.stem) or 0)
            out.append(Checkpoint(index, name, it, offset + it, path))
            last = max(last, it)
        offset += last
    return out


def pick_samples(labels: Sequence[int], n: int) -> list[int]:
    """``n`` indices taken in turn from each class, in the split's order (deterministic,
    balanced while every class lasts)."""
    if n < 3:
        raise TamerError(f"embeddings need at least 3 test images, asked for {n}")
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    order = sorted((rank, c, i) for c, members in by_class.items() for rank, i in enumerate(members))
    if len(order) < 3:
        raise TamerError(f"embeddings need at least 3 test images; the test split has {len(order)}")
    return sorted(i for _, _, i in order[:n])


def layer_names(model: nn.Module) -> list[str]:
    """The names ``--layer`` accepts (as in ``named_modules``)."""
    return [n for n, _ in model.named_modules() if n]


def head_name(model: nn.Module, example: Tensor) -> str:
    """The last ``nn.Linear`` the model calls on ``example`` (its classifier head)."""
    called: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, _a, n=n: called.append(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    if not called:
        raise ModelError(f"{type(model).__name__} calls no linear layer: name the layer to embed (--layer NAME)")
    return called[-1]


def embed(model: nn.Module, images: Tensor, layer: str, *, of_input: bool = False, batch: int = 256) -> np.ndarray:
    """(N, D) float64: the output of module ``layer`` (its input if ``of_input``) per image."""
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        close = difflib.get_close_matches(layer, layer_names(model), n=3)
        hint = f" - did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"{type(model).__name__} has no layer {layer!r}{hint} (its layers: `tamer viz layers RUN`)")
    caught: list[Tensor] = []

    def keep(value: Any) -> None:
        tensor = value[0] if isinstance(value, tuple | list) else value
        if not isinstance(tensor, Tensor):
            raise ModelError(f"layer {layer!r} gives a {type(tensor).__name__}, not a tensor to embed")
        caught.append(tensor.detach().float().flatten(1).cpu())

    module = modules[layer]
    if of_input:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: keep(out))
    try:
        with torch.no_grad():
            model.eval()
            for start in range(0, len(images), batch):
                model(images[start : start + batch])
    finally:
        handle.remove()
    # A module called more than once per forward (shared weights) gives its last call.
    per_batch = -(-len(images) // batch)
    calls = len(caught) // per_batch
    return torch.cat(caught[calls - 1 :: calls]).double().numpy()


def project(frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Each frame's 2-D PCA coordinates (one PCA, fitted on all frames) and the share of
    variance its two components explain."""
    from sklearn.decomposition import PCA

    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise TamerError(f"embeddings of different shapes across frames: {sorted(shapes)}")
    n, dim = next(iter(shapes))
    if n < 3 or dim < 2:
        raise TamerError(f"embeddings of {n} images x {dim} values: need at least 3 images and 2 values each")
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate(list(frames)))
    return [pca.transform(f) for f in frames], [float(v) for v in pca.explained_variance_ratio_]


def normalize(points: np.ndarray) -> np.ndarray:
    """Centred, scaled to unit root-mean-square distance from the centre."""
    centred = points - points.mean(axis=0)
    spread = float(np.sqrt((centred**2).sum(axis=1).mean()))
    return centred / spread if spread > 0 else centred


def align(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each frame normalized, then rotated or reflected onto the previous aligned one."""
    from scipy.linalg import orthogonal_procrustes

    out: list[np.ndarray] = []
    for frame in frames:
        points = normalize(frame)
        if out:
            rotation, _ = orthogonal_procrustes(points, out[-1])
            points = points @ rotation
        out.append(points)
    return out


def outliers(features: np.ndarray, top: int = TOP_OUTLIERS) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the ``top`` lowest Cleanlab OOD scores, lowest first; all scores)."""
    from cleanlab.outlier import OutOfDistribution

    n = len(features)
    if n < 3:
        raise TamerError(f"outlier scores need at least 3 images, got {n}")
    scores = OutOfDistribution(params={"k": min(10, n - 1)}).fit_score(features=features, verbose=False)
    return np.argsort(scores, kind="stable")[: min(top, n)], scores


def _start_model(run: RunDir, first: Checkpoint, start: nn.Module | None, allow: tuple[str, ...]) -> nn.Module | None:
    """The model the first drawn stage started from: the previous stage's checkpoint, or
    ``start`` (what the recipe builds) for the first stage."""
    before = [c for c in run.completed() if c["index"] < first.index]
    if before:
        last = max(before, key=lambda c: c["index"])
        return load_checkpoint(run.checkpoint_path(last["index"], last["stage"]), allow=allow)
    return start


def _models(
    run: RunDir, snaps: list[Checkpoint], allow: tuple[str, ...]
) -> tuple[list[tuple[Checkpoint, nn.Module]], list[str]]:
    """Each snapshot in its stage's architecture; those that do not fit, with the reason."""
    arch: dict[int, nn.Module] = {}
    loaded, skipped = [], []
    for c in snaps:
        if c.index not in arch:
            arch[c.index] = load_checkpoint(run.checkpoint_path(c.index, c.stage), allow=allow)
        model = copy.deepcopy(arch[c.index])
        state = snapshot.load(c.path)["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError:
            # e.g. pruning masks or shared codebooks that the stage folded into its checkpoint
            skipped.append(
                f"{c.path.relative_to(run.path)}: its tensors do not fit stage {c.index} ({c.stage})'s model"
            )
            continue
        loaded.append((c, model))
    return loaded, skipped


def draw_embeddings(
    run: RunDir,
    images: Tensor,
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    layer: str | None = None,
    start: nn.Module | None = None,
    allow: tuple[str, ...] = (),
    tween: int = 4,
    fps: int = 6,
    progress: bool = True,
) -> EmbeddingsRecord:
    """Draw the animation of ``images`` embedded by every checkpoint of ``run`` into
    ``<run>/embeddings/`` and log its record; ``start`` is the recipe's initial model."""
    from rich.progress import Progress

    from tinytamer.viz.animation import Frame, animate

    if len(images) != len(labels):
        raise TamerError(f"{len(images)} images but {len(labels)} labels")
    snaps = find_snapshots(run)
    if not snaps:
        raise TamerError(
            f"{run.path} has no training snapshots: give its train stage 'snapshot: N' (every N updates) and run it"
        )
    loaded, skipped = _models(run, snaps, allow)
    if not loaded:
        raise TamerError(f"{run.path}: no snapshot fits its stage's saved model ({'; '.join(skipped[:3])})")
    first_model = _start_model(run, loaded[0][0], start, allow)
    if first_model is not None:
        first = loaded[0][0]
        loaded.insert(0, (Checkpoint(first.index, first.stage, 0, first.step - first.iter, None), first_model))
    of_input = layer is None
    name = head_name(loaded[-1][1], images) if layer is None else layer
    features = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("embedding checkpoints", total=len(loaded))
        for _, model in loaded:
            features.append(embed(model, images, name, of_input=of_input))
            bar.advance(task)
    flat, variance = project(features)
    points = align(flat)
    top, scores = outliers(features[-1])
    train = [r for r in read_records(run, TrainRecord) if r.train_loss is not None]
    offsets = {c.index: c.step - c.iter for c, _ in loaded}
    curve = [(offsets[r.index] + r.iter, r.train_loss) for r in train if r.index in offsets]
    frames = [
        Frame(step=c.step, label=f"stage {c.index} {c.stage}, iteration {c.iter}", points=p)
        for (c, _), p in zip(loaded, points, strict=True)
    ]
    what = f"input of {name}" if of_input else f"output of {name}"
    out = animate(
        run.path / "embeddings",
        frames,
        np.asarray(labels),
        list(class_names),
        images,
        top,
        curve=curve,
        title=f"{run.path.name}: {what}, {len(images)} test images",
        tween=tween,
        fps=fps,
    )
    record = EmbeddingsRecord(
        stage=loaded[-1][0].stage,
        index=loaded[-1][0].index,
        layer=what,
        samples=len(images),
        steps=[c.step for c, _ in loaded],
        checkpoints=[str(c.path.relative_to(run.path)) if c.path else "" for c, _ in loaded],
        explained_variance=variance,
        outliers=[{"index": int(i), "label": int(labels[i]), "score": float(scores[i])} for i in top],
        animation=str(out.gif.relative_to(run.path)),
        video=str(out.mp4.relative_to(run.path)) if out.mp4 else None,
        frame=str(out.png.relative_to(run.path)),
        skipped=skipped,
    )
    log_record(run, record)
    return record
