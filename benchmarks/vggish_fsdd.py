"""VGGish used the way it is meant to be: a frozen embedding with a small classifier on top.

    python benchmarks/vggish_fsdd.py            # full (about an hour on 2 cores)
    python benchmarks/vggish_fsdd.py --quick    # a smoke run (minutes)

No released weights are stored here, so a width-scaled VGGish (``width``: every convolution
and the 4096-wide layers scaled; the 128-d embedding kept) is trained on the synthesized
``keywords`` set (12 classes, espeak-ng), a different task from the one it is then used on.
Its embeddings (the released post-processing: PCA fitted on the training embeddings, clip
to [-2, 2], 8 bits) of the Free Spoken Digit Dataset then train a logistic regression;
accuracy is on FSDD speakers never heard in training.  The same classifier on an untrained
network's embeddings shows what the training bought.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import save, shared_data  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.train import Solver, SolverConfig  # noqa: E402
from tinytamer.zoo import create  # noqa: E402
from tinytamer.zoo.vggish import EMBEDDING, Postprocessor  # noqa: E402


def settings(quick: bool) -> dict:
    if quick:
        return {"width": 0.125, "epochs": 2, "fsdd_limit": 200,
                "keywords": {"accents": ["en-us", "en-gb"], "train_variants": ["m1", "f1"], "test_variants": ["m7"],
                             "speeds": [160], "pitches": [50]}}  # fmt: skip
    return {"width": 0.25, "epochs": 20, "fsdd_limit": None, "keywords": {}}


def pretrain(width: float, epochs: float, keywords: dict) -> tuple[nn.Module, dict]:
    data = get_dataset("keywords", augment=True, frontend="vggish", **keywords)
    torch.manual_seed(0)
    net = nn.Sequential(create("vggish", width=width), nn.Linear(EMBEDDING, data.meta.num_classes))
    cfg = SolverConfig(optimizer="adam", base_lr=1e-3, lr_policy="poly", epochs=epochs, display=0, seed=0)
    start = time.time()
    stats = Solver(
        net,
        cfg,
        make_loader(data.train, min(32, len(data.train)), shuffle=True),
        make_loader(data.test, 128, shuffle=False),
    ).solve()
    return net[0].eval(), {"train_clips": len(data.train), "train_s": round(time.time() - start, 1), "final": stats}


@torch.no_grad()
def embed(model: nn.Module, ds) -> tuple[torch.Tensor, np.ndarray]:
    outs = [model(x) for x, _ in make_loader(ds, 128, shuffle=False)]
    return torch.cat(outs), np.asarray(ds.labels)


def probe(model: nn.Module, fsdd) -> dict:
    """A linear classifier (standardized inputs, logistic regression) on the frozen embeddings
    of FSDD's training speakers, scored on its held-out speakers: on the float embeddings, on
    the released 8-bit post-processing (PCA fitted here, released clip and codes), and on the
    same with the PCA scaled to the clip range (``Postprocessor.fit(scale_to_clip=True)``).
    ``nn.Flatten()`` as the model: the 96 x 64 log-mel input itself (the reference; float only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = embed(model, fsdd.train)
    test_x, test_y = embed(model, fsdd.test)

    def score(train_f: np.ndarray, test_f: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(train_f, train_y)
        return float((clf.predict(test_f) == test_y).mean())

    out: dict = {"float_embedding": score(train_x.numpy(), test_x.numpy())}
    for name, scaled in (("released_8bit", False), ("scaled_8bit", True)) if train_x.shape[1] == EMBEDDING else ():
        post = Postprocessor.fit(train_x, scale_to_clip=scaled)
        codes = [post(x).numpy() for x in (train_x, test_x)]
        out[name] = score(*(c.astype(np.float32) for c in codes))
        out[f"{name}_codes_at_the_clip"] = float(np.isin(codes[1], (0, 255)).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = settings(args.quick)
    fsdd = get_dataset("fsdd", shared_data() / "fsdd", frontend="vggish", val_fraction=0.0, limit=s["fsdd_limit"])
    model, pre = pretrain(s["width"], s["epochs"], s["keywords"])
    torch.manual_seed(0)
    untrained = create("vggish", width=s["width"]).eval()
    save(
        "vggish_fsdd_quick" if args.quick else "vggish_fsdd",
        {
            "settings": s,
            "model": f"VGGish scaled to width {s['width']} (released: 1.0), trained on synthesized keywords",
            "params": sum(p.numel() for p in model.parameters()),
            "pretraining": pre,
            "test": f"FSDD speakers never heard in training: {len(fsdd.test)} clips",
            "probe_train_clips": len(fsdd.train),
            "probe_trained_embedding": probe(model, fsdd),
            "probe_untrained_embedding": probe(untrained, fsdd),
            "probe_log_mel_input": probe(nn.Flatten(), fsdd)["float_embedding"],
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
