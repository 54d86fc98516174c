"""Draw aligned 2-D embedding frames as an animation: the points coloured by class, the
outliers numbered with their thumbnails beside the plot, the loss curve below with a
marker at the current step.  A GIF always (Pillow), an MP4 where ffmpeg is installed,
and the last frame as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from tinytamer.fileio import atomic_path


@dataclass(frozen=True)
class Frame:
    """One checkpoint's aligned points (N, 2) at training step ``step``."""

    step: int
    label: str
    points: np.ndarray


@dataclass(frozen=True)
class Drawn:
    gif: Path
    png: Path
    mp4: Path | None
    frames: int  # in the animation, interpolated ones included


def thumbnail(image: Tensor) -> np.ndarray:
    """(H, W) or (H, W, 3) in 0..1: a normalized image contrast-stretched back to view."""
    x = image.detach().float().cpu().numpy()
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def tweened(frames: Sequence[Frame], tween: int) -> list[tuple[Frame, bool]]:
    """The frames with ``tween`` linear interpolations between each pair; True marks a
    checkpoint's own frame."""
    out: list[tuple[Frame, bool]] = []
    for a, b in zip(frames, frames[1:], strict=False):
        out.append((a, True))
        for k in range(1, tween + 1):
            t = k / (tween + 1)
            step = round(a.step + t * (b.step - a.step))
            label = f"between {a.label} and the next checkpoint (interpolated)"
            out.append((Frame(step, label, (1 - t) * a.points + t * b.points), False))
    out.append((frames[-1], True))
    return out


def animate(
    folder: Path,
    frames: Sequence[Frame],
    labels: np.ndarray,
    class_names: list[str],
    images: Tensor,
    marked: np.ndarray,
    *,
    curve: Sequence[tuple[int, float]],
    title: str,
    tween: int = 4,
    fps: int = 6,
) -> Drawn:
    """Write ``embeddings.gif``, ``embeddings.png`` (the last frame) and, with ffmpeg,
    ``embeddings.mp4`` into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(10, 7.2), dpi=80)
    grid = fig.add_gridspec(2, 2, height_ratios=[3.2, 1], width_ratios=[3, 1.1], hspace=0.3, wspace=0.08)
    ax = fig.add_subplot(grid[0, 0])
    ax_loss = fig.add_subplot(grid[1, :])
    thumbs = grid[0, 1].subgridspec(4, 2, hspace=0.35, wspace=0.1)
    # One square box for every frame (they are centred and of unit spread), equal scales.
    reach = 1.08 * max(float(np.abs(f.points).max()) for f in frames) + 1e-9
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), xticks=[], yticks=[], aspect="equal")
    ax.set_xlabel("PCA 1 (aligned)")
    ax.set_ylabel("PCA 2 (aligned)")
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    colours = [cmap(int(c) % cmap.N) for c in labels]
    first = frames[0].points
    scatter = ax.scatter(first[:, 0], first[:, 1], c=colours, s=14, alpha=0.8, linewidths=0)
    rings = ax.scatter(first[marked, 0], first[marked, 1], s=110, facecolors="none", edgecolors="black")
    numbers = [ax.annotate(str(k + 1), first[i], fontsize=9, weight="bold") for k, i in enumerate(marked)]
    present = sorted({int(c) for c in labels})
    handles = [
        plt.Line2D(
            [], [], marker="o", ls="", color=cmap(c % cmap.N), label=class_names[c] if c < len(class_names) else str(c)
        )
        for c in present
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right", ncol=2 if len(present) > 6 else 1, framealpha=0.7)
    heading = ax.set_title("", fontsize=9)
    fig.suptitle(title, fontsize=11)
    for k, i in enumerate(marked):
        tax = fig.add_subplot(thumbs[k // 2, k % 2])
        tax.imshow(thumbnail(images[i]), cmap="gray" if images.shape[1] == 1 else None)
        name = class_names[int(labels[i])] if int(labels[i]) < len(class_names) else str(int(labels[i]))
        tax.set_title(f"{k + 1}: {name}", fontsize=7)
        tax.axis("off")
    if curve:
        xs, ys = zip(*sorted(curve), strict=True)
        ax_loss.plot(xs, ys, lw=1, color="#333")
    ax_loss.set(xlabel="training step (across the drawn stages)", ylabel="train loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.set_xlim(0, max([f.step for f in frames] + [x for x, _ in curve] + [1]))
    cursor = ax_loss.axvline(frames[0].step, color="crimson", lw=1.5)
    fig.text(
        0.01,
        0.005,
        "Each checkpoint's frame is centred, scaled to unit spread and rotated/reflected onto the previous one "
        "(orthogonal Procrustes); rings: Cleanlab's 8 lowest out-of-distribution scores at the last checkpoint.",
        fontsize=6.5,
        color="#555",
    )

    def draw(frame: Frame) -> Image.Image:
        scatter.set_offsets(frame.points)
        rings.set_offsets(frame.points[marked])
        for text, i in zip(numbers, marked, strict=True):
            text.set_position(frame.points[i])
        heading.set_text(f"step {frame.step}: {frame.label}")
        cursor.set_xdata([frame.step, frame.step])
        fig.canvas.draw()
        return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())

    sequence = tweened(frames, tween)
    mp4 = folder / "embeddings.mp4" if animation.writers.is_available("ffmpeg") else None
    pictures = []
    with atomic_path(mp4) if mp4 else nullcontext() as tmp:
        writer = None
        if mp4:
            writer = animation.FFMpegWriter(fps=fps, extra_args=["-f", "mp4"])
            writer.setup(fig, str(tmp), dpi=80)
        for frame, _own in sequence:
            pictures.append(draw(frame))
            if writer:
                writer.grab_frame()
        if writer:
            writer.finish()
    gif, png = folder / "embeddings.gif", folder / "embeddings.png"
    # Each checkpoint's own frame is held longer than the interpolated ones around it.
    durations = [int(1000 / fps) * (3 if own else 1) for _, own in sequence]
    durations[-1] = 2500
    with atomic_path(gif) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    with atomic_path(png) as tmp:
        pictures[-1].save(tmp, format="PNG")
    plt.close(fig)
    return Drawn(gif, png, mp4, len(sequence))
