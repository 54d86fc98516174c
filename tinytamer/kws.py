"""Keyword spotting end to end: a spoken clip -> the frontend -> a deployed model -> the keyword.

The clip is what a microphone would give (16 kHz samples); the frontend is the one the model
was trained on (``tinytamer.audio.frontends``); the model runs on any target's ``Deployed``.
On a Cortex-M target, :class:`DeviceSpotter` puts the fixed-point MFCC
(``tinytamer.micro.ops.frontend``) in front of the network in one image, so the emulated
device takes raw int16 audio and returns the keyword's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinytamer.calib import Calibration
from tinytamer.data import DatasetBundle, make_loader
from tinytamer.data.audio import to_int16
from tinytamer.data.keywords import CLIP, synthesize
from tinytamer.deploy import deploy
from tinytamer.errors import ModelError
from tinytamer.micro.ops import frontend
from tinytamer.micro.profiles import get_profile
from tinytamer.micro.session import Session
from tinytamer.targets.base import Deployed

DEMO_UTTERANCES = (("yes", "en-us+f4"), ("stop", "en-gb+m7"), ("left", "en-gb-scotland+f4"))


@dataclass(frozen=True)
class Spotted:
    """One clip's answer: the word said, the voice, and what the device heard."""

    said: str
    voice: str
    heard: str
    confidence: float


def spoken_clip(word: str, voice: str) -> np.ndarray:
    """``word`` spoken by espeak-ng ``voice``, centred in a one-second clip (float32, 16 kHz)."""
    speech = synthesize(word, voice, 160, 50)[:CLIP]
    clip = np.zeros(CLIP, dtype=np.float32)
    start = (CLIP - len(speech)) // 2
    clip[start : start + len(speech)] = 0.7 * speech / max(float(np.abs(speech).max()), 1e-6)
    return clip


def deploy_spotter(model: nn.Module, data: DatasetBundle, folder: Path, target: str = "cortex-m4") -> DeviceSpotter:
    """``model`` (trained on ``data`` with the ``mfcc-q`` frontend) quantized to int8 on the first
    train batches, compiled for ``target`` and rebuilt with the frontend in front."""
    used = getattr(data.train, "frontend", None)
    if used is None or used.name != "mfcc-q":
        raise ModelError(
            "keyword spotter: the model must be trained on the device's frontend "
            f"(data option frontend: mfcc-q), not '{getattr(used, 'name', None)}'"
        )
    model.eval()
    example = data.test[0][0].unsqueeze(0)
    calib = Calibration(make_loader(data.train, 32, shuffle=False), limit=4)
    with torch.no_grad():
        deployed, _ = deploy(
            model, target, folder / "network", example_input=example, precision="int8", calib=calib, repeats=0
        )
    return DeviceSpotter(deployed, folder / "spotter")


def spot_utterances(
    spotter: DeviceSpotter, class_names: Sequence[str], utterances: Sequence[tuple[str, str]] = DEMO_UTTERANCES
) -> list[Spotted]:
    """Synthesize each ``(word, voice)``; the device hears its raw int16 samples."""
    clips = np.stack([to_int16(spoken_clip(word, voice)) for word, voice in utterances])
    logits = spotter.logits(clips).reshape(len(clips), -1).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return [
        Spotted(word, voice, class_names[b], float(p[b]))
        for (word, voice), b, p in zip(utterances, best, probs, strict=True)
    ]


class DeviceSpotter:
    """A Cortex-M deployment with the MFCC frontend in front: int16 audio in, logits out.

    ``deployed`` is a micro target's ``Deployed`` of a network trained on the ``mfcc-q``
    frontend (the device's arithmetic); the image is rebuilt in ``workdir`` with the
    frontend kernel and its tables.
    """

    def __init__(self, deployed: Deployed, workdir: Path) -> None:
        program = getattr(deployed, "program", None)
        if program is None or program.device == "host":
            raise ModelError(f"keyword spotter: target '{deployed.target}' is not an emulated Cortex-M")
        self.program = program
        self.memory_profile = getattr(deployed, "memory_profile", "ideal")
        self.build = frontend.build_spotter(program, workdir)

    def _session(self, count: bool, profile: str = "ideal") -> Session:
        return Session(self.program.device, elf=self.build.elf, count=count, profile=profile)

    def logits(self, audio: np.ndarray) -> np.ndarray:
        """Float logits for each int16 clip (N x 16000) run on the device, frontend included."""
        audio = np.atleast_2d(np.asarray(audio))
        if audio.dtype != np.int16 or audio.shape[1] != frontend.SAMPLES:
            raise ModelError(
                f"keyword spotter: expected int16 clips of {frontend.SAMPLES} samples, got {audio.dtype} {audio.shape}"
            )
        cm = self.program.cmodel
        out = []
        with self._session(count=False) as sess:
            t_audio = sess.alloc(frontend.SAMPLES, np.int16)
            t_feat = self.program.input_buffer(sess)  # the network's input, in its arena
            t_out = sess.alloc(cm.output_size)
            t_scratch = sess.alloc(frontend.SCRATCH_WORDS, np.int32)
            for clip in audio:
                sess.write(t_audio, clip)
                sess.call("tt_kws_run", t_audio, t_out, t_scratch, t_feat)
                out.append(sess.read(t_out))
        return self.program.dequantize_output(np.stack(out))

    def features(self, audio: np.ndarray) -> np.ndarray:
        """The int8 features the device's frontend computes for one int16 clip (HWC, flat)."""
        with self._session(count=False) as sess:
            t_audio = sess.alloc(frontend.SAMPLES, np.int16)
            t_feat = self.program.input_buffer(sess)
            t_scratch = sess.alloc(frontend.SCRATCH_WORDS, np.int32)
            sess.write(t_audio, audio)
            sess.call("tt_mfcc_run", t_audio, t_feat, t_scratch)
            return sess.read(t_feat)

    def measure(self, audio: np.ndarray) -> dict[str, object]:
        """Frontend and network separately: instructions, estimated cycles (under the
        deployment's memory profile), flash and SRAM of one clip."""
        profile = get_profile(self.memory_profile, self.program.device).name
        cm = self.program.cmodel
        with self._session(count=True, profile=profile) as sess:
            t_audio = sess.alloc(frontend.SAMPLES, np.int16)
            t_feat = self.program.input_buffer(sess)  # the network's input, in its arena
            t_out = sess.alloc(cm.output_size)
            t_scratch = sess.alloc(frontend.SCRATCH_WORDS, np.int32)
            sess.write(t_audio, audio)
            fe = sess.call("tt_mfcc_run", t_audio, t_feat, t_scratch)
            net = sess.call("tt_model_run", t_feat, t_out)
        net_flash = self.program.arm.flash_bytes
        return {
            "memory_profile": profile,
            "estimate": "cycles are estimates from the emulator's cycle table; instructions are exact",
            "frontend": {
                "instructions": fe.instructions,
                "est_cycles": fe.est_cycles,
                "flash_bytes": self.build.flash_bytes - net_flash,
                "flash_note": "the spotter image's flash less the network-only image's (kernel, tables, entry points)",
                "sram_bytes": frontend.SAMPLES * 2 + frontend.SCRATCH_WORDS * 4 + fe.stack_bytes,
                "sram_note": "int16 audio buffer + FFT scratch + measured peak stack",
            },
            "network": {
                "instructions": net.instructions,
                "est_cycles": net.est_cycles,
                "flash_bytes": net_flash,
                "sram_bytes": cm.sram_bytes(net.stack_bytes),
                "sram_note": "activation arena (the features included) + output tensor + measured peak stack",
            },
        }
