"""VGGish: the released architecture, its post-processing, and the guarded weight loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tinytamer.errors import ModelError
from tinytamer.zoo import create
from tinytamer.zoo.vggish import Postprocessor, VGGish, load_released


def test_released_architecture_shapes_and_names() -> None:
    m = create("vggish")
    assert sum(p.numel() for p in m.parameters()) == 72_141_184  # the released VGGish
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    convs = {k: s for k, s in shapes.items() if k.startswith("features") and k.endswith("weight")}
    assert convs == {
        "features.0.weight": (64, 1, 3, 3),
        "features.3.weight": (128, 64, 3, 3),
        "features.6.weight": (256, 128, 3, 3),
        "features.8.weight": (256, 256, 3, 3),
        "features.11.weight": (512, 256, 3, 3),
        "features.13.weight": (512, 512, 3, 3),
    }
    assert shapes["embeddings.0.weight"] == (4096, 512 * 6 * 4)
    assert shapes["embeddings.2.weight"] == (4096, 4096) and shapes["embeddings.4.weight"] == (128, 4096)


def test_width_scaled_vggish_embeds_to_128() -> None:
    m = create("vggish", width=0.125)
    out = m(torch.randn(3, 1, 96, 64))
    assert out.shape == (3, 128) and (out >= 0).all()  # the released embedding is post-ReLU
    with pytest.raises(ModelError, match="width"):
        VGGish(0.0)


def test_postprocessor_clips_and_quantizes_to_8_bits() -> None:
    post = Postprocessor(torch.eye(128), torch.zeros(128))
    x = torch.zeros(1, 128)
    x[0, :4] = torch.tensor([0.0, 2.5, -3.0, 1.0])
    q = post(x)
    assert q.dtype == torch.uint8
    assert q[0, :4].tolist() == [128, 255, 0, 191]  # round((x + 2) * 255 / 4), clipped to [-2, 2]
    emb = torch.randn(500, 128) * torch.linspace(3, 0.1, 128)
    fitted = Postprocessor.fit(emb)
    pca = (emb - fitted.means) @ fitted.eigenvectors.T
    var = pca.var(dim=0)
    assert torch.all(var[:-1] >= var[1:] - 1e-4) and abs(float(pca.mean())) < 1e-4
    # A network of another scale: scaled, three standard deviations of the first component
    # reach the clip; unscaled, most of its codes sit at the clip.
    big = emb * 50.0
    scaled = Postprocessor.fit(big, scale_to_clip=True)
    first = ((big - scaled.means) @ scaled.eigenvectors.T)[:, 0]
    assert abs(3.0 * float(first.std()) - 2.0) < 1e-3
    assert (
        float(torch.isin(Postprocessor.fit(big)(big)[:, 0], torch.tensor([0, 255], dtype=torch.uint8)).float().mean())
        > 0.9
    )


def _save_pth(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_loader_reads_state_dicts_and_numpy_pca(tmp_path: Path) -> None:
    src = VGGish(0.0625)
    w = _save_pth(tmp_path / "vggish.pth", src.state_dict())
    pca = _save_pth(tmp_path / "pca.pth", {"pca_eigen_vectors": np.eye(128), "pca_means": np.zeros((128, 1))})
    model, post = load_released(w, pca, width=0.0625)
    x = torch.randn(2, 1, 96, 64)
    torch.testing.assert_close(model(x), src.eval()(x))
    assert post is not None and post(model(x)).dtype == torch.uint8
    save_file(src.state_dict(), str(tmp_path / "v.safetensors"))
    assert load_released(tmp_path / "v.safetensors", width=0.0625)[1] is None


class _Gadget:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_loader_refuses_pickled_code_wrong_shapes_and_junk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"features.0.weight": _Gadget()}, f, protocol=2)
    with pytest.raises(ModelError, match="evil.pth: not a readable weights file"):
        load_released(evil)
    assert "pickled code ran" not in capsys.readouterr().out
    state = VGGish(0.0625).state_dict()
    state["embeddings.4.weight"] = torch.zeros(64, 256)
    bad = _save_pth(tmp_path / "bad.pth", state)
    with pytest.raises(ModelError, match=r"'embeddings.4.weight' is \(64, 256\)"):
        load_released(bad, width=0.0625)
    with pytest.raises(ModelError, match="not a VGGish state dict"):
        load_released(_save_pth(tmp_path / "other.pth", {"x": torch.zeros(1)}), width=0.0625)
    with pytest.raises(ModelError, match="expected a dict"):
        load_released(_save_pth(tmp_path / "list.pth", [torch.zeros(1)]))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="junk.safetensors: not a readable"):
        load_released(tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="no such file"):
        load_released(tmp_path / "absent.pth")
    w = _save_pth(tmp_path / "w.pth", VGGish(0.0625).state_dict())
    with pytest.raises(ModelError, match="eigenvectors must be 128x128"):
        load_released(
            w, _save_pth(tmp_path / "p.pth", {"pca_eigen_vectors": np.eye(3), "pca_means": np.zeros(3)}), width=0.0625
        )
