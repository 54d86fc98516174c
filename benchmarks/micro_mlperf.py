"""MLPerf Tiny models on the emulated Cortex-M4: accuracy through the device, exact
instructions, estimated cycles, flash and peak SRAM, untuned vs tuned.

    python benchmarks/baselines.py resnet8 lenet5        # the trained ResNet-8 and LeNet-5 (~75 min)
    python benchmarks/micro_mlperf.py train dscnn        # cached in benchmarks/work/micro/ (~2 min)
    python benchmarks/micro_mlperf.py measure resnet8 dscnn lenet5
    python benchmarks/micro_mlperf.py report resnet8 dscnn lenet5   # the markdown table
    python benchmarks/micro_mlperf.py tune resnet8 dscnn lenet5     # fill the tuning log only

Models and data: ResNet-8 on the CIFAR-10 JPEG copy and LeNet-5 on MNIST are the trained
baselines of ``benchmarks/baselines.py`` (ResNet-8: 60 epochs, MLPerf Tiny's 85% quality
target); DS-CNN on spoken digits (FSDD, 8 kHz WAVs -> 49 x 10 log-mel features computed here)
is trained here.  Accuracy through the device: the first ``DEVICE_SAMPLES`` test images run
in the emulator; the whole test split runs through the bit-exact integer reference (the
device's outputs equal it on every emulated image, checked).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import WORK, save, shared_data  # noqa: E402
from tinytamer import zoo  # noqa: E402

CACHE = WORK / "micro"
EPOCHS = {"dscnn": 8}
TRAIN_LIMIT = {"dscnn": None}  # training samples used (None: all)
LR = {"dscnn": 0.05}


# ----------------------------------------------------------------------------- data


def _log_mel(wav: np.ndarray, sr: int = 8000, frames: int = 49, bands: int = 10) -> np.ndarray:
    """49 x 10 log-mel features of one second: 40 ms Hann frames every 20 ms, 10 mel bands
    from 20 Hz to 4 kHz (the MLPerf Tiny KWS front end's shape, on 8 kHz audio)."""
    n = sr
    x = np.zeros(n, np.float32)
    w = wav.astype(np.float32)[:n]
    start = (n - len(w)) // 2
    x[start : start + len(w)] = w
    win, hop, nfft = 320, 160, 512
    idx = np.arange(frames)[:, None] * hop + np.arange(win)[None, :]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(win), nfft)) ** 2

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    edges = 700 * (10 ** (np.linspace(mel(20), mel(sr / 2), bands + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(nfft, 1 / sr)
    fb = np.zeros((bands, len(freqs)))
    for b in range(bands):
        lo, mid, hi = edges[b : b + 3]
        fb[b] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return np.log(spec @ fb.T + 1e-6).astype(np.float32)


def fsdd() -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """FSDD split as its README suggests: recordings 0-4 of every speaker and digit are test."""
    from scipy.io import wavfile

    cache = CACHE / "fsdd_logmel.npz"
    if not cache.exists():
        feats, labels, test = [], [], []
        for f in sorted((shared_data() / "fsdd" / "recordings").glob("*.wav")):
            digit, _, index = f.stem.split("_")
            sr, wav = wavfile.read(f)
            if wav.ndim > 1:
                wav = wav.mean(axis=1)
            feats.append(_log_mel(wav / 32768.0, sr))
            labels.append(int(digit))
            test.append(int(index) < 5)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=np.stack(feats), y=np.array(labels), test=np.array(test))
    d = np.load(cache)
    x, y, test = d["x"], d["y"], d["test"]
    mean, std = x[~test].mean(), x[~test].std()
    x = torch.from_numpy((x - mean) / std)[:, None]  # N x 1 x 49 x 10
    y = torch.from_numpy(y).long()
    t = torch.from_numpy(test)
    return (torch.utils.data.TensorDataset(x[~t], y[~t]), torch.utils.data.TensorDataset(x[t], y[t]))


def dataset(name: str):
    from tinytamer.data import get_dataset

    if name == "resnet8":
        b = get_dataset("cifar10", shared_data() / "cifar10-jpg.tar.gz", val_fraction=0.0, augment=True)
        return b.train, b.test
    if name == "lenet5":
        b = get_dataset("mnist", shared_data() / "mnist", val_fraction=0.0)
        return b.train, b.test
    return fsdd()


def trained(name: str) -> nn.Module:
    """The trained model: the baseline checkpoint (ResNet-8, LeNet-5) or this script's DS-CNN."""
    from safetensors.torch import load_file

    from tinytamer.checkpoint import load_checkpoint

    if name == "dscnn":
        path = CACHE / "dscnn.safetensors"
        if not path.is_file():
            sys.exit(f"{path} is missing: run `python benchmarks/micro_mlperf.py train dscnn` first")
        m = model(name)
        m.load_state_dict(load_file(str(path)))
        return m.eval()
    path = WORK / "baselines" / f"{name}.safetensors"
    if not path.is_file():
        sys.exit(f"{path} is missing: run `python benchmarks/baselines.py {name}` first")
    return load_checkpoint(path).eval()


def model(name: str) -> nn.Module:
    if name == "resnet8":
        return zoo.create("resnet8", num_classes=10, in_channels=3)
    if name == "dscnn":
        return zoo.create("dscnn", num_classes=10, in_channels=1)
    return zoo.create("lenet5", num_classes=10, in_channels=1, input_size=28)


# ----------------------------------------------------------------------------- train


def train(name: str) -> None:
    if name != "dscnn":
        sys.exit(f"{name} is trained by benchmarks/baselines.py (the recipe runner), not here")
    torch.manual_seed(0)
    train_set, test_set = dataset(name)
    if TRAIN_LIMIT[name] is not None:
        train_set = torch.utils.data.Subset(train_set, range(TRAIN_LIMIT[name]))
    m = model(name)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    steps = EPOCHS[name] * len(loader)
    opt = torch.optim.SGD(m.parameters(), lr=LR[name], momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    t0 = time.time()
    for epoch in range(EPOCHS[name]):
        m.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            sched.step()
        print(
            f"{name} epoch {epoch + 1}: {accuracy(m, test_set, limit=2000):.4f} ({time.time() - t0:.0f} s)", flush=True
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(m.state_dict(), str(CACHE / f"{name}.safetensors"))


def accuracy(m: nn.Module, data, limit: int | None = None) -> float:
    m.eval()
    loader = torch.utils.data.DataLoader(data, batch_size=256)
    hit = n = 0
    with torch.no_grad():
        for x, y in loader:
            hit += int((m(x).argmax(1) == y).sum())
            n += len(y)
            if limit is not None and n >= limit:
                break
    return hit / n


# ----------------------------------------------------------------------------- measure

DEVICE_SAMPLES = {"resnet8": 1000, "dscnn": 1000, "lenet5": 1000}
PUBLISHED_M4 = {
    "resnet8": {"TFLite Micro": 84.5e6, "microTVM": 46.7e6, "X-CUBE-AI": 19.8e6, "Plumerai": 20.1e6},
    "dscnn": {"TFLite Micro": 21.8e6, "X-CUBE-AI": 5.2e6},
}


def measure(name: str) -> dict:
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.program import build_program

    torch.manual_seed(0)
    train_set, test_set = dataset(name)
    m = trained(name)
    calib_loader = torch.utils.data.DataLoader(
        train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    calib = [x for _, (x, _) in zip(range(8), calib_loader, strict=False)]
    gm = quantize_ptq(m, calib)
    n = min(DEVICE_SAMPLES[name], len(test_set))
    xs = torch.stack([test_set[i][0] for i in range(n)])
    ys = np.array([int(test_set[i][1]) for i in range(n)])
    out: dict = {
        "model": name,
        "fp32_accuracy": accuracy(m, test_set),
        "int8_fake_quant_accuracy": accuracy(gm, test_set),
        "test_samples": len(test_set),
        "device_samples": n,
        "published_m4_cycles": PUBLISHED_M4.get(name),
    }
    for sched in ("portable", "default", "tuned"):
        t0 = time.time()
        prog = build_program(
            gm, xs[:1], "cortex-m4", CACHE / f"build-{name}-{sched}", schedules=sched, tuning_log=CACHE / "tuning.jsonl"
        )
        q = prog.quantize_input(xs.numpy())
        prof = prog.profile(q[0], per_layer=sched == "tuned")
        # The same inference on MLPerf Tiny's reference board: flash behind 5 wait states and
        # the ART accelerator (published board figures are measured; these are estimates).
        board = prog.profile(q[0], per_layer=False, memory_profile="stm32l4r5")
        rec = {
            "instructions": prof["instructions"],
            "est_cycles": prof["est_cycles"],
            "memory_profile": prof["memory_profile"],
            "est_cycles_stm32l4r5": board["est_cycles"],
            "flash_reads": board["flash_reads"],
            "fetch_misses": board["fetch_misses"],
            "data_misses": board["data_misses"],
            "flash_bytes": prog.arm.flash_bytes,
            # Arena (the input included) + output + measured stack (Deployed.measure's figure).
            "sram_bytes": prog.cmodel.sram_bytes(prof["stack_bytes"]),
            "stack_bytes": prof["stack_bytes"],
            "arena_bytes": prog.cmodel.plan.arena_size,
            "memory_plan": prog.cmodel.plan.report(prog.graph),
            "per_layer": prof["layers"],
            "build_and_profile_s": round(time.time() - t0, 1),
        }
        if sched == "tuned":
            rec["tuning"] = prog.info.get("tuning")
            t0 = time.time()
            dev = prog.run_device(q)
            rec["device_run_s"] = round(time.time() - t0, 1)
            t0 = time.time()
            everything = torch.stack([test_set[i][0] for i in range(len(test_set))])
            ref_all = prog.run_reference(prog.quantize_input(everything.numpy()))
            ref = ref_all[:n]
            rec["bit_exact_vs_reference"] = bool(np.array_equal(dev, ref))
            rec["qemu_bit_exact"] = bool(np.array_equal(prog.run_qemu(q[:5]), ref[:5]))
            logits = prog.dequantize_output(dev)
            rec["device_accuracy"] = float((logits.argmax(1) == ys).mean())
            all_ys = np.array([int(test_set[i][1]) for i in range(len(test_set))])
            rec["reference_accuracy_full_test"] = float((prog.dequantize_output(ref_all).argmax(1) == all_ys).mean())
            rec["reference_run_s"] = round(time.time() - t0, 1)
            with torch.no_grad():
                want = gm(xs).numpy()
            step = prog.graph.tensors[prog.graph.output].scale
            rec["max_abs_diff_vs_fake_quant_steps"] = float(np.abs(logits - want).max() / step)
            rec["top1_agree_vs_fake_quant"] = float((logits.argmax(1) == want.argmax(1)).mean())
        out[sched] = rec
        print(name, sched, rec["instructions"], rec["est_cycles"], rec["est_cycles_stm32l4r5"], flush=True)
    out["macs"] = prog.graph.macs()
    return out


def markdown(results: dict) -> str:
    """The RESULTS.md section: one row per model and schedule."""
    rows = [
        "| model | schedules | device acc. (n) | int8 reference acc. (full test) | fp32 / int8 PyTorch acc. "
        "| instructions | est. cycles (ideal) | est. cycles (stm32l4r5) | flash | peak SRAM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for sched in ("portable", "default", "tuned"):
            m = r[sched]
            acc = f"{m['device_accuracy']:.3f} ({r['device_samples']})" if "device_accuracy" in m else ""
            full = f"{m['reference_accuracy_full_test']:.3f} ({r['test_samples']})" if "device_accuracy" in m else ""
            torch_acc = f"{r['fp32_accuracy']:.3f} / {r['int8_fake_quant_accuracy']:.3f}"
            rows.append(
                f"| {name} | {sched} | {acc} | {full} | {torch_acc} | {m['instructions']:,} | "
                f"{m['est_cycles'] / 1e6:.2f} M | "
                f"{m['est_cycles_stm32l4r5'] / 1e6:.2f} M | {m['flash_bytes'] / 1024:.1f} KiB | "
                f"{m['sram_bytes'] / 1024:.1f} KiB |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd, names = sys.argv[1], sys.argv[2:]
    if cmd == "train":
        for n in names:
            train(n)
    elif cmd == "measure":
        results = {n: measure(n) for n in names}
        for n, r in results.items():
            save(f"micro_mlperf_{n}", r)
        print(
            json.dumps(
                {
                    n: {k: v for k, v in r.items() if k not in ("portable", "default", "tuned")}
                    for n, r in results.items()
                },
                indent=1,
            )
        )
        print(markdown(results))
    elif cmd == "tune":
        # Layer shapes do not depend on the weights: tune on an untrained copy.
        from tinytamer.compress.int8 import quantize_ptq
        from tinytamer.micro.lower import lower
        from tinytamer.micro.tuning import tune

        for n in names:
            shape = {"resnet8": (3, 32, 32), "dscnn": (1, 49, 10), "lenet5": (1, 28, 28)}[n]
            x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
            g = lower(quantize_ptq(model(n).eval(), [x]), x[:1])
            print(n, json.dumps(tune(g, "cortex-m4", log=CACHE / "tuning.jsonl"), indent=1))
    elif cmd == "report":
        from benchmarks._common import RESULTS

        merged = {}
        for n in names:
            merged[n] = json.loads((RESULTS / f"micro_mlperf_{n}.json").read_text())
        print(markdown(merged))
    else:
        sys.exit(f"unknown command {cmd}: train | measure | report")
