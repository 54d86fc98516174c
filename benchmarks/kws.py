"""Keyword spotting from raw audio: DS-CNN on synthesized speech, measured on unheard voices,
on real recordings, and on the emulated Cortex-M4 with the fixed-point MFCC frontend.

    python benchmarks/kws.py            # full: every default voice, 30 epochs (hours on 2 cores)
    python benchmarks/kws.py --quick    # a smoke run: a few voices, a few hundred updates

Two tasks, both trained on the features the device computes (the ``mfcc-q`` frontend):
1. ``keywords``: the 12 MLPerf Tiny classes spoken by espeak-ng; test = voice variants never
   used in training.  No real recordings of these words are stored here (Speech Commands is
   not), so this accuracy is on synthetic voices only.
2. digits: "zero".."nine" spoken by espeak-ng, (a) alone and (b) plus the FSDD training
   speakers; test = FSDD speakers never heard in training (real recorded speech: the
   figure that counts for how far synthesized training gets).
The keyword model is then quantized to int8 and deployed to cortex-m4 with the frontend in
front: accuracy from raw int16 audio through the emulated device, frontend and network
cycles (estimates, under the deployment's memory profile), flash and SRAM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer.data import get_dataset, make_loader  # noqa: E402
from tinytamer.data.audio import AudioSplit, build_audio_bundle  # noqa: E402
from tinytamer.data.keywords import ACCENTS, PITCHES, SPEEDS, TEST_VARIANTS, TRAIN_VARIANTS, generate  # noqa: E402
from tinytamer.kws import deploy_spotter  # noqa: E402
from tinytamer.train import Solver, SolverConfig, evaluate  # noqa: E402
from tinytamer.zoo import create  # noqa: E402

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FRONTEND = "mfcc-q"


def settings(quick: bool) -> dict:
    if quick:
        return {"accents": ["en-us", "en-gb"], "train_variants": ["m1", "f1"], "test_variants": ["m7", "f4"],
                "speeds": [160], "pitches": [50], "epochs": 3, "device_clips": 12, "fsdd_limit": 200}  # fmt: skip
    return {"accents": list(ACCENTS), "train_variants": list(TRAIN_VARIANTS), "test_variants": list(TEST_VARIANTS),
            "speeds": list(SPEEDS), "pitches": list(PITCHES), "epochs": 30, "device_clips": 240,
            "fsdd_limit": None}  # fmt: skip


def train(bundle, epochs: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    c, h, w = bundle.meta.input_shape
    model = create("dscnn", num_classes=bundle.meta.num_classes, in_channels=c, input_hw=(h, w))
    cfg = SolverConfig(optimizer="adam", base_lr=0.003, lr_policy="poly", power=1.0, epochs=epochs,
                       weight_decay=1e-4, display=0, seed=seed)  # fmt: skip
    loader = make_loader(bundle.train, min(64, len(bundle.train)), shuffle=True, seed=seed)
    Solver(model, cfg, loader, progress=True).solve()
    return model.eval()


def accuracy(model: torch.nn.Module, ds) -> dict:
    r = evaluate(model, make_loader(ds, 256, shuffle=False))
    return {"accuracy": r["accuracy"], "samples": len(ds)}


def keywords_task(s: dict, out: dict) -> torch.nn.Module:
    opts = {k: s[k] for k in ("accents", "train_variants", "test_variants", "speeds", "pitches")}
    data = get_dataset("keywords", augment=True, frontend=FRONTEND, **opts)
    start = time.time()
    model = train(data, s["epochs"])
    out["keywords"] = {
        "train_clips": len(data.train),
        "test": "espeak-ng voice variants never used in training: " + ", ".join(s["test_variants"]),
        "test_synthetic_unheard_voices": accuracy(model, data.test),
        "train_s": round(time.time() - start, 1),
    }
    device(model, data, s["device_clips"], out)
    return model


def device(model, data, clips: int, out: dict) -> None:
    spotter = deploy_spotter(model, data, WORK / "kws" / "device")
    pick = np.random.default_rng(0).permutation(len(data.test))[:clips]
    logits = spotter.logits(data.test.waves[pick]).reshape(len(pick), -1)
    hits = int((logits.argmax(axis=1) == data.test.labels[pick]).sum())
    out["device"] = {
        "target": "cortex-m4 (emulated), int8, fixed-point MFCC frontend on the device",
        "accuracy_raw_audio": hits / len(pick),
        "samples": len(pick),
        **spotter.measure(data.test.waves[pick[0]]),
    }


def digits_task(s: dict, out: dict) -> None:
    fsdd = get_dataset(
        "fsdd", shared_data() / "fsdd", augment=True, frontend=FRONTEND, val_fraction=0.0, limit=s["fsdd_limit"]
    )
    synth = generate(s["train_variants"], s["accents"], s["speeds"], s["pitches"], 0, words=DIGITS, extras=False)
    base = {"class_names": [str(d) for d in range(10)], "frontend": FRONTEND, "augment": True, "noise": None,
            "val_fraction": 0.0, "seed": 0, "limit": None}  # fmt: skip
    test = AudioSplit(fsdd.test.waves, fsdd.test.labels, "FSDD held-out speakers")
    synth_only = build_audio_bundle("digits-synth", train=AudioSplit(*synth, "espeak-ng digits"), test=test, **base)
    mixed_waves = np.concatenate([synth[0], fsdd.train.waves])
    mixed_labels = np.concatenate([synth[1], fsdd.train.labels])
    mixed = build_audio_bundle(
        "digits-mixed", train=AudioSplit(mixed_waves, mixed_labels, "synth + FSDD"), test=test, **base
    )
    res = {"test": f"FSDD (real recordings), {len(fsdd.test)} clips of speakers never heard in training"}
    for name, bundle in (("synthetic_only", synth_only), ("synthetic_plus_fsdd", mixed), ("fsdd_only", fsdd)):
        model = train(bundle, s["epochs"])
        res[name] = {"train_clips": len(bundle.train), **accuracy(model, bundle.test)}
    out["digits"] = res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = settings(args.quick)
    out: dict = {"quick": args.quick, "settings": s, "frontend": FRONTEND}
    keywords_task(s, out)
    digits_task(s, out)
    save("kws_quick" if args.quick else "kws", out, quick=args.quick)


if __name__ == "__main__":
    main()
