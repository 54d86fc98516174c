"""The records of a run's ``metrics.jsonl``, typed: written and read only through this module.

Two kinds of record, one JSON object a line:

- :class:`TrainRecord` (``"kind": "train"``): one training interval the Solver reported
  (iteration, lr, train / held-out loss and accuracy).
- :class:`StageRecord` (``"kind": "stage"``): what one finished stage measured: accuracy
  with its sample count, split and the runtime it ran on, parameters, non-zeros, MACs,
  bytes on disk.  A method's stage adds its own typed fields in a subclass that names the
  stage (:class:`PruneRecord` for ``prune``, :class:`DeployRecord` for ``deploy`` ...);
  a stage without one (a user's stage) writes the common fields.

Every model forbids unknown keys, so a key renamed on one side fails where it is written
or read (naming the file and line), never as an empty cell in a report.  The JSON keeps
the flat layout of earlier runs: one object a line, the stage's fields beside the common
ones.  A record from a run made before a field was renamed is refused, not guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinytamer.errors import CorruptFileError
from tinytamer.fileio import read_jsonl_lines
from tinytamer.targets.base import Cost

if TYPE_CHECKING:
    from tinytamer.rundir import RunDir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Record(_Strict):
    """What every line of metrics.jsonl holds: its kind, the stage that wrote it, when."""

    kind: str
    stage: str = Field(description="the recipe stage that wrote the record")
    index: int = Field(ge=0, description="the stage's position in the recipe")
    time: float | None = Field(None, description="seconds since the epoch, stamped when logged")


class TrainRecord(Record):
    """One training interval (Solver display / test interval, and the final one)."""

    kind: Literal["train"] = "train"
    iter: int
    epoch: float
    lr: float
    train_loss: float | None = None
    train_acc: float | None = Field(
        None, description="top-1 on the training batches of the interval (None when the task is not scored so)"
    )
    images_per_s: float | None = None
    test_loss: float | None = Field(None, description="on the held-out split, at test intervals")
    test_acc: float | None = None


class OutputParity(_Strict):
    """One output of the deployed model against the reference (targets.base.check_parity)."""

    max_abs_err: float
    max_rel_err: float
    mean_abs_err: float
    n: int
    top1_agree: float | None = None


class Parity(_Strict):
    """The parity check a target ran before accepting its artifact."""

    ok: bool
    precision: str
    tolerance: dict[str, float]
    outputs: list[OutputParity]
    inputs: int | None = Field(None, description="samples the check ran on")
    kernels_vs_qdq: Parity | None = Field(
        None, description="onnxruntime int8: its kernels against the QDQ graph's arithmetic"
    )
    float_top1_agree: float | None = Field(
        None, description="int8 from our scales: top-1 agreement with the float model"
    )
    top1_flips_near_ties: int | None = Field(
        None,
        description="onnxruntime int8 kernels with 7-bit weights: top-1 flips accepted as rounding "
        "(outputs within 2% of the QDQ graph's)",
    )


class StageRecord(Record):
    """What one stage measured; a method's stage adds its fields in a subclass (``STAGE``)."""

    STAGE: ClassVar[str | None] = None

    kind: Literal["stage"] = "stage"
    accuracy: float | None = Field(None, description="top-1 (the task's score; detection: mAP@0.5) of the model")
    accuracy_runtime: str | None = Field(
        None, description="where the accuracy was measured: 'PyTorch' or the target's name"
    )
    eval_samples: int | None = Field(None, description="samples the accuracy was scored on")
    map50: float | None = Field(None, description="detection: mAP@0.5, VOC all-point interpolation")
    map50_95: float | None = Field(None, description="detection: COCO mAP@[.5:.95] (101-point)")
    eval_total: int | None = Field(
        None, description="samples in the split (more than eval_samples when a part was scored)"
    )
    split: Literal["train", "val", "test"] | None = None
    loss: float | None = None
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    dense_bytes: int | None = Field(None, description="4 bytes per parameter (float32)")
    file: str | None = Field(None, description="the model file, relative to the run folder")
    bytes: int | None = Field(None, description="bytes on disk of ``file`` (deploy: the artifact)")
    physical: bool | None = Field(
        None, description="true: layers really got smaller; false: removed weights are zeros in dense tensors"
    )
    accuracy_before_finetune: float | None = None
    note: str | None = None
    warning: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.STAGE is not None:
            _STAGE_TYPES[cls.STAGE] = cls


# The record type of each stage that has one, by stage name (filled by StageRecord subclasses).
_STAGE_TYPES: dict[str, type[StageRecord]] = {}


def record_type(stage: str) -> type[StageRecord]:
    """The record type of the stage registered as ``stage`` (the common fields if it has none)."""
    return _STAGE_TYPES.get(stage, StageRecord)


class EvaluateRecord(StageRecord):
    STAGE: ClassVar[str | None] = "evaluate"
    plot: str | None = Field(
        None, description="a detector's predictions on the first images of the split, relative to the run folder"
    )


class SensitivityRecord(StageRecord):
    STAGE: ClassVar[str | None] = "sensitivity"

    baseline: float = Field(description="accuracy of the unpruned model on the split")
    chosen: dict[str, float] = Field(
        description="per layer, the highest sparsity within max_drop (0: none); what "
        "prune's sparsity 'sensitivity' applies"
    )
    max_drop: float
    plot: str


class PruneRecord(StageRecord):
    STAGE: ClassVar[str | None] = "prune"

    method: Literal["magnitude"]
    schedule: Literal["oneshot", "iterative", "agp"]
    sparsity: float = Field(description="over the pruned layers")
    layers: dict[str, float] = Field(description="sparsity per pruned layer")


class ChannelPruneRecord(StageRecord):
    STAGE: ClassVar[str | None] = "channel_prune"

    method: Literal["channel"]
    channels: dict[str, tuple[int, int]] = Field(description="layer -> [channels before, after]")


class LowRankRecord(StageRecord):
    STAGE: ClassVar[str | None] = "lowrank"

    method: str
    macs_before: int
    macs_after: int
    macs_speedup: float
    ranks: dict[str, int]
    layers: list[dict[str, Any]] = Field(description="compress.lowrank.LayerReport per layer")
    notes: list[str]


class QuantizeRecord(StageRecord):
    STAGE: ClassVar[str | None] = "quantize"

    method: Literal["ptq", "qat"]
    calibration: str
    quant_params: str = Field(description="the scales / zero points file, relative to the run")
    weight_bits: dict[str, int]
    act_points: int = Field(description="quantized activation points")
    one_scale_layers: list[str] = Field(
        default_factory=list, description="layers quantized with one weight scale (per_channel: false)"
    )


class FixedPointRecord(StageRecord):
    STAGE: ClassVar[str | None] = "fixed_point"

    bits: int
    mode: Literal["dynamic", "static"]
    formats: dict[str, dict[str, int | None]] = Field(description="layer -> bits, w_fl, a_fl")


class TTQRecord(StageRecord):
    STAGE: ClassVar[str | None] = "ttq"

    t: float
    ternary_layers: dict[str, dict[str, float]] = Field(description="layer -> wp, wn, t, sparsity")


class ShareRecord(StageRecord):
    STAGE: ClassVar[str | None] = "kmeans_share"

    centroids_used: dict[str, int]
    ratio: float = Field(description="dense tensor bytes over the file's bytes")
    by_encoding: dict[str, dict[str, int]]


class SaveCompressedRecord(StageRecord):
    STAGE: ClassVar[str | None] = "save_compressed"

    ratio: float = Field(description="dense tensor bytes over the file's bytes")
    tensor_bytes: int = Field(description="dense bytes of the tensors the file codes")
    by_encoding: dict[str, dict[str, int]]


class HaqRecord(StageRecord):
    """The ``haq`` stage (tinytamer.search.haq): the bit policy found, its cost and reward."""

    STAGE: ClassVar[str | None] = "haq"

    resource: str = Field(description="what the budget limits, e.g. 'cortex-m4 flash'")
    resource_unit: str
    resource_source: str = Field(description="how the cost was obtained: measured or predicted")
    budget: float
    resource_cost: float = Field(description="the chosen policy's resource figure (within budget)")
    resource_cost_8bit: float = Field(description="the same figure with 8 bits everywhere")
    quantizer: Literal["linear", "kmeans"]
    episodes: int
    val_accuracy_fp: float = Field(description="full precision, on the validation split")
    val_accuracy: float = Field(description="the policy after the episode's short fine-tune")
    reward: float
    policy: dict[str, dict[str, int]] = Field(description="layer -> w_bits, a_bits")
    history: str = Field(description="every episode (bits, cost, accuracy, reward), relative to the run")
    reward_plot: str
    policy_plot: str


class NasRecord(StageRecord):
    """What a hardware-aware architecture search found (tinytamer.search): the architecture,
    the budget, and its cost predicted from the cost table beside the cost measured on the
    target after retraining."""

    space: str = Field(description="the search space (tinytamer.search.spaces)")
    target: str
    memory_profile: str | None = Field(None, description="micro: what the cycles are estimated under")
    budget: dict[str, float] = Field(description="cost-table metric -> limit")
    arch: dict[str, Any] = Field(description="choice -> the option chosen")
    arch_indices: list[int]
    predicted: dict[str, float] = Field(description="cost of the architecture predicted from the cost table")
    measured: dict[str, float] = Field(description="the same metrics measured on the target (the retrained network)")
    within_budget: bool = Field(description="every measured metric within its limit")
    violations: list[str] = Field(default_factory=list, description="measured metrics over their limit")
    cost_table: str = Field(description="the cost table, relative to the run (or as given)")
    val_accuracy_search: float | None = Field(None, description="the search's score with the supernet's weights")
    history: str = Field(description="the search's history file, relative to the run")


class SposRecord(NasRecord):
    """The ``spos`` stage (tinytamer.search.spos)."""

    STAGE: ClassVar[str | None] = "spos"

    generations: int
    evaluated: int = Field(description="architectures scored (all within the predicted budget)")
    rejected: int = Field(description="architectures drawn outside the predicted budget, never scored")
    random_val_accuracy: float | None = Field(
        None, description="the best of as many uniformly drawn in-budget architectures, scored alike"
    )
    random_arch_indices: list[int] | None = None


class ProxylessRecord(NasRecord):
    """The ``proxylessnas`` stage (tinytamer.search.proxyless)."""

    STAGE: ClassVar[str | None] = "proxylessnas"

    loss: str = Field(description="the latency loss form: 'mul', 'add' or 'hinge'")
    metric: str = Field(description="the cost-table metric in the loss")
    latency_target: float
    expected_latency: float = Field(description="E[LAT] of the final architecture parameters")
    gradient: str = Field(description="'binary' (BinaryConnect) or 'reinforce'")
    argmax_arch_indices: list[int] | None = Field(
        None, description="the most likely path (argmax alpha per edge), derived unless over budget"
    )
    argmax_violations: list[str] = Field(
        default_factory=list,
        description="the budget entries the most likely path exceeds on predicted cost (why it was replaced)",
    )


class TargetRecord(StageRecord):
    """A stage that ran the model on a target: where, at which precision, and its parity."""

    target: str
    precision: str
    parity: Parity


class DeployRecord(TargetRecord):
    """The ``deploy`` stage, on any target: the accuracy fields are the runtime's (the
    emulated device's for a micro target), ``accuracy_torch`` PyTorch's on the same samples.
    The micro fields are filled by targets that count them (None elsewhere)."""

    STAGE: ClassVar[str | None] = "deploy"

    options: dict[str, Any] = Field(default_factory=dict, description="the target's options, defaults included")
    accuracy_torch: float | None = Field(None, description="PyTorch on the same samples")
    compressed_bytes: int | None = Field(None, description="the run's compressed file, if saved")
    artifacts: list[str]
    latency_ms: float | None = Field(None, description="median (None: not measured; micro: see est_time_ms)")
    peak_rss_mb: float | None = None
    int8_params: str | None = Field(None, description="whose int8 scales the artifact uses")
    cost: Cost | None = Field(None, description="everything the target measured")
    bit_exact_inputs: int | None = Field(None, description="micro: inputs checked bit for bit against the C reference")
    instructions: int | None = Field(None, description="micro: exact, one inference")
    est_cycles: int | None = Field(
        None, description="micro: an estimate, from the cycle table named in cycle_table, under memory_profile"
    )
    memory_profile: str | None = Field(
        None, description="micro: the memory profile est_cycles is estimated under (tinytamer.micro.profiles)"
    )
    est_time_ms: float | None = Field(
        None, description="micro: est_cycles at the profile's clock (an estimate, not a timing)"
    )
    cycle_table: str | None = Field(None, description="micro: the source of the cycle estimate")
    flash_bytes: int | None = None
    sram_bytes: int | None = None
    arena_bytes: int | None = None
    memory_plan: str | None = Field(None, description="micro: the activation arena and its peak")
    per_layer: list[dict[str, Any]] | None = Field(None, description="micro: layer, instructions, est_cycles")


class BenchPick(_Strict):
    target: str
    precision: str
    speedup: float | None
    acc_delta: float | None


class BenchRecord(StageRecord):
    STAGE: ClassVar[str | None] = "bench"

    bench: list[dict[str, Any]] = Field(description="deploy.BenchRow per target, precision, batch")
    best: BenchPick | None
    max_acc_drop: float | None


class EmbeddingsRecord(Record):
    """What ``tamer viz embeddings`` drew (tinytamer.viz.embeddings): a fixed set of test
    images embedded by every saved checkpoint, projected to 2-D, aligned frame to frame."""

    kind: Literal["embeddings"] = "embeddings"
    layer: str = Field(description="the module whose output (or the head's input) was embedded")
    samples: int = Field(description="test images embedded at every checkpoint")
    steps: list[int] = Field(description="training step of each frame, counted across the drawn stages")
    checkpoints: list[str] = Field(description="each frame's snapshot, relative to the run ('' : the start)")
    explained_variance: list[float] = Field(description="of the two PCA components, over all frames")
    outliers: list[dict[str, Any]] = Field(description="index, label, score: Cleanlab's lowest OOD scores")
    animation: str = Field(description="the GIF, relative to the run")
    video: str | None = Field(None, description="the MP4 (where ffmpeg was found), relative to the run")
    frame: str = Field(description="the last frame as a PNG, relative to the run")
    skipped: list[str] = Field(default_factory=list, description="snapshots left out, each with the reason")


R = TypeVar("R", bound=Record)


def stage_record(fields: dict[str, Any]) -> StageRecord:
    """``fields`` (with ``stage`` and ``index``) as the record type of that stage."""
    return record_type(str(fields.get("stage"))).model_validate(fields)


def parse_record(raw: Any) -> Record:
    """One decoded metrics line as its typed record; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"a {type(raw).__name__}, not a JSON object")
    kind = raw.get("kind")
    if kind == "train":
        return TrainRecord.model_validate(raw)
    if kind == "stage":
        return stage_record(raw)
    if kind == "embeddings":
        return EmbeddingsRecord.model_validate(raw)
    raise ValueError(f"unknown record kind {kind!r} (known: 'train', 'stage', 'embeddings')")


def log_record(run: RunDir, record: Record) -> None:
    """Append ``record`` to the run's metrics.jsonl: its kind and the fields that were given
    (a field left at its default is not written; it reads back as that default)."""
    run.log({"kind": record.kind, **record.model_dump(exclude_unset=True)})


def read_records(run: RunDir, kind: type[R]) -> list[R]:
    """The run's records of type ``kind`` (Record: all), in the order they were written.

    A line that is not a record of a known kind, or has a key no record has (a renamed
    one), is a CorruptFileError naming the file and line.
    """
    out = []
    for line, raw in read_jsonl_lines(run.metrics_path):
        try:
            record = parse_record(raw)
        except (ValueError, ValidationError) as exc:
            raise CorruptFileError(f"{run.metrics_path}, line {line}: not a metrics record: {_reason(exc)}") from None
        if isinstance(record, kind):
            out.append(record)
    return out


def last_record(records: Sequence[R], *, with_accuracy: bool = False) -> R | None:
    """The last of ``records`` (with a measured accuracy, if asked), or None."""
    for record in reversed(records):
        if not with_accuracy or getattr(record, "accuracy", None) is not None:
            return record
    return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(exc)
