"""The fixed-point MFCC: its numpy reference against the C kernel (bit-exact), against the
float MLPerf Tiny MFCC (close), and the keyword spotter image on the emulated Cortex-M4."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinytamer.audio import mfcc as M
from tinytamer.audio import mfcc_fixed as F
from tinytamer.micro.codegen import RUNTIME_DIR
from tinytamer.micro.ops import frontend as FE

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")

HARNESS = r"""
#include <stdio.h>
#include "tt_mfcc.h"
extern const tt_mfcc_params tt_mfcc_p;
int main(void) {
    static int16_t audio[16000];
    static int32_t scratch[TT_MFCC_SCRATCH_WORDS], q16[49 * 10];
    static int8_t q8[49 * 10];
    while (fread(audio, sizeof audio, 1, stdin) == 1) {
        tt_mfcc_q16(&tt_mfcc_p, audio, q16, scratch);
        tt_mfcc(&tt_mfcc_p, audio, q8, scratch);
        fwrite(q16, sizeof q16, 1, stdout);
        fwrite(q8, sizeof q8, 1, stdout);
    }
    return 0;
}
"""
QUANT = FE.OutputQuant(scale=0.37, zero_point=-9)


def clips(rng: np.random.Generator) -> np.ndarray:
    """Hostile and ordinary audio: silence, full-scale square, tones, noise, clicks, tiny signals."""
    t = np.arange(16000) / 16000
    out = [
        np.zeros(16000),
        np.where(np.sin(2 * np.pi * 100 * t) >= 0, 32767, -32768),
        np.full(16000, -32768),
        20000 * np.sin(2 * np.pi * 1000 * t),
        3 * np.sin(2 * np.pi * 300 * t),
        rng.integers(-32768, 32768, 16000),
        rng.normal(0, 40, 16000),
    ]
    clicks = np.zeros(16000)
    clicks[rng.integers(0, 16000, 20)] = 30000
    out.append(clicks)
    return np.clip(np.rint(np.stack(out)), -32768, 32767).astype(np.int16)


@needs_gcc
def test_c_kernel_is_bit_exact_with_the_integer_reference(tmp_path: Path) -> None:
    (tmp_path / "tables.c").write_text(FE.tables_c(QUANT))
    (tmp_path / "main.c").write_text(HARNESS)
    exe = tmp_path / "mfcc"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsanitize=undefined"]
    srcs = [str(RUNTIME_DIR / "tt_mfcc.c"), str(tmp_path / "tables.c"), str(tmp_path / "main.c")]
    subprocess.run(["gcc", *flags, f"-I{RUNTIME_DIR}", *srcs, "-o", str(exe)], check=True, capture_output=True)
    audio = clips(np.random.default_rng(0))
    proc = subprocess.run([str(exe)], input=audio.tobytes(), capture_output=True, check=True)
    assert proc.stderr == b""
    per = 490 * 4 + 490
    raw = proc.stdout
    assert len(raw) == per * len(audio)
    for i, a in enumerate(audio):
        q16 = np.frombuffer(raw[i * per : i * per + 1960], dtype=np.int32).reshape(49, 10)
        q8 = np.frombuffer(raw[i * per + 1960 : (i + 1) * per], dtype=np.int8).reshape(49, 10)
        np.testing.assert_array_equal(q16, F.mfcc_q16(a), err_msg=f"clip {i}")
        np.testing.assert_array_equal(q8, FE.reference_int8(a, QUANT), err_msg=f"clip {i}")


def test_fixed_point_tracks_the_float_mlperf_mfcc() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    for amp in (0.5, 0.01):
        x = np.rint(amp * (np.sin(2 * np.pi * 440 * t) + 0.3 * rng.standard_normal(16000)) * 32768) / 32768
        err = np.abs(F.mfcc_float(x) - M.mfcc(x))
        assert err.max() < 0.3 and err.mean() < 0.05
    np.testing.assert_allclose(F.mfcc_float(np.zeros(16000)), M.mfcc(np.zeros(16000)), atol=1e-3)


def test_integer_helpers_are_exact() -> None:
    n = [0, 1, 2, 3, 4, 15, 16, 17, (1 << 28) - 1, 1 << 28, 12345678901, (1 << 52) - 1]
    assert F.isqrt(np.array(n, dtype=np.int64)).tolist() == [math.isqrt(v) for v in n]
    e = np.array([1, 2, 3, 1 << 20, (1 << 34) + 12345], dtype=np.int64)
    np.testing.assert_allclose(F.log2_q16(e) / 65536, np.log2(e.astype(float)), atol=2e-5)
    assert F.log2_q16(np.array([0]))[0] == 0  # log2(max(e, 1))


def test_tables_describe_the_reference_filterbank() -> None:
    np.testing.assert_allclose(F.MEL_Q15 / 32768, M.MEL, atol=1 / 65536)
    assert F.MEL_WEIGHTS.size < 300  # sparse: each bin feeds at most two bands
    assert F.SCALE == 21 and F.LOG_FLOOR == int(np.floor(np.log2(1e-6) * 65536))


needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="the ARM toolchain is not installed")


@pytest.mark.slow  # two Cortex-M builds and emulated runs: about 30 s on a quiet machine
@needs_arm
def test_cortex_m4_takes_raw_audio_and_returns_the_networks_output(tmp_path: Path) -> None:
    import torch

    from tinytamer.calib import Calibration
    from tinytamer.deploy import deploy
    from tinytamer.kws import DeviceSpotter
    from tinytamer.zoo.dscnn import DSCNN

    torch.manual_seed(0)
    audio = clips(np.random.default_rng(2))[3:6]
    feats = torch.tensor(np.stack([F.mfcc_float(a / 32768.0) for a in audio]))[:, None]
    model = DSCNN(4, 1, (49, 10), filters=8, blocks=1).eval()
    deployed, _ = deploy(
        model,
        "cortex-m4",
        tmp_path / "m4",
        example_input=feats[:1],
        precision="int8",
        calib=Calibration([(feats, torch.zeros(3))], limit=1),
        repeats=0,
    )
    spotter = DeviceSpotter(deployed, tmp_path / "spotter")
    t = spotter.program.graph.tensors[spotter.program.graph.input]
    quant = FE.OutputQuant(float(t.scale), int(t.zero_point))
    for a in audio:
        np.testing.assert_array_equal(spotter.features(a), FE.reference_int8(a, quant).reshape(-1))
    expected = spotter.program.run_reference(np.stack([FE.reference_int8(a, quant).reshape(-1) for a in audio]))
    np.testing.assert_array_equal(spotter.logits(audio), spotter.program.dequantize_output(expected))
    cost = spotter.measure(audio[0])
    assert cost["frontend"]["instructions"] > 0 and cost["network"]["instructions"] > 0
    assert 0 < cost["frontend"]["flash_bytes"] < cost["network"]["flash_bytes"] + 32000


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
TINY = dict(accents=["en-us"], speeds=[160], pitches=[50], train_variants=["m1", "f1"], test_variants=["m7"])


@needs_espeak
def test_spotter_refuses_a_model_trained_on_another_frontend(tmp_path: Path) -> None:
    from tinytamer.data import get_dataset
    from tinytamer.errors import ModelError
    from tinytamer.kws import deploy_spotter
    from tinytamer.zoo.dscnn import DSCNN

    data = get_dataset("keywords", cache_dir=tmp_path, frontend="mfcc", **TINY)
    with pytest.raises(ModelError, match="frontend: mfcc-q"):
        deploy_spotter(DSCNN(12, 1, (49, 10), filters=8, blocks=1), data, tmp_path)


@pytest.mark.slow  # synthesis, a short training, two Cortex-M builds: about a minute on a quiet machine
@needs_espeak
@needs_arm
def test_tiny_keyword_run_end_to_end(tmp_path: Path) -> None:
    import torch

    from tinytamer.data import get_dataset, make_loader
    from tinytamer.kws import deploy_spotter, spot_utterances
    from tinytamer.train import Solver, SolverConfig
    from tinytamer.zoo.dscnn import DSCNN

    data = get_dataset("keywords", cache_dir=tmp_path, frontend="mfcc-q", augment=True, val_fraction=0.0, **TINY)
    torch.manual_seed(0)
    model = DSCNN(12, 1, (49, 10), filters=16, blocks=1)
    cfg = SolverConfig(optimizer="adam", base_lr=0.01, max_iter=40, display=0)
    Solver(model, cfg, make_loader(data.train, 8, shuffle=True), progress=False).solve()
    spotter = deploy_spotter(model, data, tmp_path / "device")
    said = spot_utterances(spotter, data.meta.class_names, [("yes", "en-us+m7"), ("no", "en-us+m7")])
    assert [s.said for s in said] == ["yes", "no"]
    assert all(s.heard in data.meta.class_names and 0 < s.confidence <= 1 for s in said)
    # the device hears the raw clips exactly as the int8 network does on the reference features
    logits = spotter.logits(data.test.waves[:4])
    assert logits.shape == (4, 12)
