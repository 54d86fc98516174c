"""VGGish, AudioSet's reference audio embedding (Hershey et al. 2017), and its post-processing.

Hershey et al. 2017, "CNN Architectures for Large-Scale Audio Classification" (configuration
"A" of VGG adapted to 96 x 64 log-mel examples; the released model): 3x3 convolutions with
ReLU, conv 64 - pool - conv 128 - pool - conv 256 x2 - pool - conv 512 x2 - pool (2x2 max
pools), then fully connected 4096 - 4096 - 128, each with ReLU: a 128-d embedding of one
0.96 s example (``tinytamer.audio.vggish_frontend``).

The layer names and the flatten order (channels last, as TensorFlow flattened) are those of
the PyTorch port of the released weights (``features.N`` / ``embeddings.N``), so its state
dict loads unchanged with :func:`load_released`.  ``width`` scales every convolution and the
4096-wide layers (``width=1`` is the released network; the 128-d embedding stays).

Post-processing as released (``vggish_postprocess.Postprocessor``): PCA with the released
means and eigenvectors, clip to [-2, 2], quantize to 8 bits: ``round((x + 2) * 255 / 4)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo.registry import register_model

EMBEDDING = 128
INPUT_HW = (96, 64)
CLIP = 2.0


class VGGish(nn.Module):
    """The VGGish network (see the module docstring); input N x 1 x 96 x 64 log-mel."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not 0 < width <= 1:
            raise ModelError(f"vggish: width must be in (0, 1], got {width}")
        c = [max(1, round(n * width)) for n in (64, 128, 256, 512)]
        fc = max(1, round(4096 * width))
        layers: list[nn.Module] = []
        cin = 1
        for cout, repeat in zip(c, (1, 1, 2, 2), strict=True):
            for _ in range(repeat):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        flat = c[3] * (INPUT_HW[0] // 16) * (INPUT_HW[1] // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, fc),
            nn.ReLU(True),
            nn.Linear(fc, fc),
            nn.ReLU(True),
            nn.Linear(fc, EMBEDDING),
            nn.ReLU(True),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # TensorFlow flattened N x H x W x C; the released fc weights expect that order
        x = x.permute(0, 2, 3, 1).reshape(len(x), -1)
        return self.embeddings(x)


class Postprocessor(nn.Module):
    """PCA (``(x - means) @ eigenvectors.T``), clip to [-2, 2], 8-bit quantization."""

    def __init__(self, eigenvectors: Tensor, means: Tensor) -> None:
        super().__init__()
        if eigenvectors.shape != (EMBEDDING, EMBEDDING) or means.numel() != EMBEDDING:
            raise ModelError(
                f"vggish PCA: eigenvectors must be {EMBEDDING}x{EMBEDDING} and means {EMBEDDING} values, "
                f"got {tuple(eigenvectors.shape)} and {tuple(means.shape)}"
            )
        self.register_buffer("eigenvectors", eigenvectors.float())
        self.register_buffer("means", means.float().reshape(1, EMBEDDING))

    def forward(self, embeddings: Tensor) -> Tensor:
        pca = (embeddings - self.means) @ self.eigenvectors.T
        return torch.round((pca.clamp(-CLIP, CLIP) + CLIP) * (255.0 / (2 * CLIP))).to(torch.uint8)

    @classmethod
    def fit(cls, embeddings: Tensor, *, scale_to_clip: bool = False) -> Postprocessor:
        """PCA parameters estimated from ``embeddings`` (N x 128), as the released ones were from
        AudioSet's: the mean and the covariance's eigenvectors as rows, by decreasing variance.

        The released clip and 8-bit codes assume the released network's scale.  A network
        trained here may have another: with ``scale_to_clip`` the eigenvectors are scaled by one
        factor so that three standard deviations of the first component reach the clip (a
        departure from the released parameters, which have no such factor)."""
        x = embeddings.double()
        means = x.mean(dim=0)
        cov = torch.cov((x - means).T)
        values, vectors = torch.linalg.eigh(cov)
        order = torch.argsort(values, descending=True)
        rows = vectors[:, order].T
        if scale_to_clip:
            top = float(values[order[0]].clamp_min(0.0).sqrt())
            if top > 0.0:
                rows = rows * (CLIP / (3.0 * top))
        return cls(rows.float(), means.float())


@register_model("vggish", input_shape=(1, *INPUT_HW), num_classes=EMBEDDING)
def vggish(width: float = 1.0) -> nn.Module:
    """VGGish (``width=1``: the released network) giving 128-d embeddings of 1 x 96 x 64 log-mel."""
    return VGGish(width)


# ------------------------------------------------------------------------------ released files
# What a pickled numpy array is rebuilt from (the names numpy 1.x and 2.x pickles use): data only.
_NUMPY_GLOBALS = [
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *{type(np.dtype(t)) for t in (np.float32, np.float64, np.int32, np.int64)},
]


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors``, ``.npz`` or a PyTorch file read with
    ``weights_only=True`` (tensors and numpy arrays only: no pickled code runs)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        # the PCA file of the PyTorch port holds numpy arrays: allow exactly their rebuilders
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every reader's failure is the file's fault here
        raise ModelError(
            f"{path}: not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ModelError(f"{path}: expected a dict of named tensors, got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "fiu":
                raise ModelError(f"{path}: '{k}' is a {v.dtype} array, not numbers")
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, Tensor):
            raise ModelError(f"{path}: '{k}' is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out


def load_released(
    weights: str | Path, pca: str | Path | None = None, *, width: float = 1.0
) -> tuple[VGGish, Postprocessor | None]:
    """The released VGGish (PyTorch-port state dict) and, if given, its PCA parameters
    (``pca_eigen_vectors``, ``pca_means``).  Shapes are checked against the network first.
    ``width`` is that of the network the file holds (1 for the released weights)."""
    weights = Path(weights)
    model = VGGish(width)
    state = _read_tensors(weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"{weights}: not a VGGish state dict (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(f"{weights}: '{k}' is {tuple(state[k].shape)}, VGGish needs {tuple(v.shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    post = None
    if pca is not None:
        p = _read_tensors(Path(pca))
        if {"pca_eigen_vectors", "pca_means"} - set(p):
            raise ModelError(f"{pca}: expected 'pca_eigen_vectors' and 'pca_means', found {sorted(p)[:4]}")
        post = Postprocessor(p["pca_eigen_vectors"], p["pca_means"])
    return model.eval(), post
