"""The typed metrics records: every kind round-trips, a renamed key fails, and the CLI summary,
the report and the stages' queries read only typed records."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from tinytamer import records
from tinytamer.errors import CorruptFileError
from tinytamer.records import (
    BenchRecord,
    ChannelPruneRecord,
    DeployRecord,
    EmbeddingsRecord,
    EvaluateRecord,
    FixedPointRecord,
    HaqRecord,
    LowRankRecord,
    ProxylessRecord,
    PruneRecord,
    QuantizeRecord,
    Record,
    SaveCompressedRecord,
    SensitivityRecord,
    ShareRecord,
    SposRecord,
    StageRecord,
    TrainRecord,
    TTQRecord,
    log_record,
    read_records,
)
from tinytamer.rundir import RunDir
from tinytamer.targets.base import Cost

FIGURES = {
    "accuracy": 0.9,
    "accuracy_runtime": "PyTorch",
    "params": 1000,
    "nonzero_params": 400,
    "macs": 50_000,
    "dense_bytes": 4000,
}
PARITY = {
    "ok": True,
    "precision": "int8",
    "tolerance": {"max_rel_err": 0.5},
    "outputs": [{"max_abs_err": 0.25, "max_rel_err": 0.01, "mean_abs_err": 0.02, "n": 8, "top1_agree": 0.96875}],
    "inputs": 8,
}
BY_ENCODING = {"sparse": {"tensors": 2, "dense_bytes": 4000, "coded_bytes": 600}}


NAS = dict(
    space="shufflenet",
    target="cortex-m4",
    memory_profile="stm32l4r5",
    budget={"est_cycles": 1e6},
    arch={"blocks.0": "k3"},
    arch_indices=[0],
    predicted={"est_cycles": 9e5},
    measured={"est_cycles": 9.1e5},
    within_budget=True,
    cost_table="lut.json",
    history="h.json",
)


def _samples() -> list[Record]:
    """One record of every kind, every field given."""

    def stage(cls: type[StageRecord], index: int, **fields: object) -> StageRecord:
        return cls(stage=cls.STAGE or "train", index=index, **FIGURES, **fields)

    return [
        TrainRecord(
            stage="train",
            index=0,
            iter=10,
            epoch=0.5,
            lr=0.01,
            train_loss=1.2,
            train_acc=0.6,
            images_per_s=900.0,
            test_loss=1.1,
            test_acc=0.62,
        ),
        stage(StageRecord, 0, note="trained", warning="short"),
        EvaluateRecord(
            stage="evaluate", index=1, **FIGURES, split="val", loss=0.3, eval_samples=36, eval_total=360, plot="p.png"
        ),
        stage(
            SensitivityRecord,
            2,
            physical=False,
            split="val",
            baseline=0.91,
            chosen={"fc1": 0.8, "fc2": 0.0},
            max_drop=0.01,
            plot="stages/02_sensitivity/s.png",
        ),
        stage(
            PruneRecord,
            3,
            file="stages/03_prune/model.tt",
            bytes=900,
            physical=False,
            note="zeros",
            method="magnitude",
            schedule="agp",
            sparsity=0.8,
            layers={"fc1": 0.8},
            accuracy_before_finetune=0.5,
            warning="stopped early",
        ),
        stage(ChannelPruneRecord, 4, physical=True, method="channel", channels={"conv1": (16, 8)}),
        stage(
            LowRankRecord,
            5,
            physical=True,
            method="svd",
            macs_before=100,
            macs_after=50,
            macs_speedup=2.0,
            ranks={"fc1": 4},
            layers=[{"name": "fc1", "rank": 4}],
            notes=["fc2 skipped"],
        ),
        stage(
            QuantizeRecord,
            6,
            method="qat",
            calibration="mse",
            quant_params="q.json",
            weight_bits={"fc1": 8},
            act_points=3,
        ),
        stage(FixedPointRecord, 7, bits=8, mode="dynamic", formats={"fc1": {"bits": 8, "w_fl": 6, "a_fl": None}}),
        stage(TTQRecord, 8, t=0.05, ternary_layers={"fc1": {"wp": 0.1, "wn": 0.2, "t": 0.05, "sparsity": 0.4}}),
        stage(ShareRecord, 9, centroids_used={"fc1": 31}, ratio=8.5, by_encoding=BY_ENCODING),
        stage(
            SaveCompressedRecord,
            10,
            file="stages/10_save_compressed/model.tt",
            bytes=700,
            ratio=5.7,
            tensor_bytes=4000,
            by_encoding=BY_ENCODING,
        ),
        DeployRecord(
            stage="deploy",
            index=11,
            **{**FIGURES, "accuracy_runtime": "onnxruntime"},
            target="onnxruntime",
            precision="int8",
            parity={**PARITY, "kernels_vs_qdq": PARITY, "float_top1_agree": 0.97},
            accuracy_torch=0.91,
            eval_samples=360,
            eval_total=360,
            bytes=2048,
            compressed_bytes=700,
            artifacts=["stages/11_deploy/model.onnx"],
            latency_ms=1.234,
            peak_rss_mb=80.5,
            int8_params="ours",
            cost=Cost(
                target="onnxruntime",
                precision="int8",
                batch=1,
                threads=2,
                latency_ms_median=1.234,
                repeats=30,
                extra={"variant": ""},
            ),
        ),
        DeployRecord(
            stage="deploy",
            index=12,
            **{**FIGURES, "accuracy": 0.95, "accuracy_runtime": "cortex-m4"},
            target="cortex-m4",
            precision="int8",
            options={"schedules": "default"},
            artifacts=["model.elf"],
            parity=PARITY,
            accuracy_torch=0.96,
            eval_samples=100,
            eval_total=360,
            bit_exact_inputs=8,
            instructions=123_456,
            est_cycles=150_000,
            flash_bytes=20_000,
            sram_bytes=6_000,
            arena_bytes=4096,
            memory_plan="arena 4096 B",
            per_layer=[{"layer": "fc1", "instructions": 9}],
            cycle_table="TRM",
        ),
        stage(
            BenchRecord,
            13,
            bench=[{"target": "torch", "precision": "fp32", "batch": 1}],
            best={"target": "torch", "precision": "fp32", "speedup": 1.0, "acc_delta": 0.0},
            max_acc_drop=None,
        ),
        stage(
            HaqRecord,
            14,
            resource="cortex-m4 flash",
            resource_unit="bytes",
            resource_source="measured",
            budget=9000.0,
            resource_cost=8800.0,
            resource_cost_8bit=18000.0,
            quantizer="linear",
            episodes=2,
            val_accuracy_fp=0.9,
            val_accuracy=0.88,
            reward=-0.002,
            policy={"fc1": {"w_bits": 4, "a_bits": 8}},
            history="h.json",
            reward_plot="r.png",
            policy_plot="p.png",
        ),
        stage(SposRecord, 15, **NAS, generations=2, evaluated=12, rejected=3, random_val_accuracy=0.4),
        stage(
            ProxylessRecord,
            16,
            **NAS,
            loss="mul",
            metric="est_cycles",
            latency_target=1e6,
            expected_latency=9.5e5,
            gradient="binary",
        ),
        EmbeddingsRecord(
            stage="viz",
            index=17,
            layer="head",
            samples=64,
            steps=[0, 50],
            checkpoints=["", "snapshots/iter_50.pt"],
            explained_variance=[0.4, 0.2],
            outliers=[{"index": 3, "label": 1, "score": 0.01}],
            animation="embeddings.gif",
            frame="embeddings.png",
        ),
    ]


def _run(tmp_path, lines: list[Record]) -> RunDir:
    run = RunDir.create(tmp_path / "r", "name: r\n")
    for record in lines:
        log_record(run, record)
    return run


def test_every_record_kind_round_trips(tmp_path):
    samples = _samples()
    # every stage that has its own record type is among the samples
    assert set(records._STAGE_TYPES.values()) <= {type(r) for r in samples}
    back = read_records(_run(tmp_path, samples), Record)
    assert [type(r) for r in back] == [type(r) for r in samples]
    for was, now in zip(samples, back, strict=True):
        assert now.time is not None  # stamped when logged
        assert now.model_dump(exclude={"time"}) == was.model_dump(exclude={"time"})


def test_the_file_keeps_the_flat_layout_and_only_the_given_fields(tmp_path):
    run = _run(
        tmp_path,
        [
            SensitivityRecord(
                stage="sensitivity", index=0, baseline=0.9, chosen={"fc1": 0.5}, max_drop=0.01, plot="p.png"
            )
        ],
    )
    (line,) = run.records()
    assert list(line) == ["time", "kind", "stage", "index", "baseline", "chosen", "max_drop", "plot"]
    assert line["kind"] == "stage" and line["chosen"] == {"fc1": 0.5}


def test_a_record_type_refuses_a_renamed_key_where_it_is_written():
    with pytest.raises(ValidationError, match="chosen_sparsity"):
        SensitivityRecord(stage="sensitivity", index=0, baseline=0.9, chosen_sparsity={}, max_drop=0.01, plot="p.png")
    with pytest.raises(ValidationError, match="acuracy"):
        records.stage_record({"stage": "train", "index": 0, "acuracy": 0.5})


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({"kind": "stage", "stage": "train", "index": 0, "acuracy": 0.5}, "acuracy: Extra inputs"),
        (
            {
                "kind": "stage",
                "stage": "prune",
                "index": 0,
                "schedule": "agp",
                "sparsity": 0.5,
                "layer_sparsity": {},
                "method": "magnitude",
            },
            "layers: Field required (and 1 more)",
        ),
        (
            {"kind": "train", "stage": "train", "index": 0, "iteration": 1, "epoch": 0, "lr": 0.1},
            "iter: Field required",
        ),
        ({"kind": "summary", "stage": "train", "index": 0}, "unknown record kind 'summary'"),
        ([1, 2], "a list, not a JSON object"),
    ],
)
def test_a_line_that_is_no_known_record_names_the_file_and_line(tmp_path, line, says):
    run = _run(tmp_path, [StageRecord(stage="train", index=0, accuracy=0.5)])
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.raises(CorruptFileError, match=re.escape(f"{run.metrics_path}, line 2: ") + ".*" + re.escape(says)):
        read_records(run, Record)


def test_a_stage_without_its_own_type_writes_the_common_fields(tmp_path):
    run = _run(tmp_path, [records.stage_record({"stage": "my_stage", "index": 0, "note": "ran"})])
    (rec,) = read_records(run, StageRecord)
    assert type(rec) is StageRecord and rec.note == "ran"


def test_the_context_queries_earlier_stages_by_record_type(tmp_path):
    from tinytamer.recipe import Context

    samples = _samples()
    run = _run(tmp_path, samples)
    ctx = Context(recipe=None, rundir=run, data=None, stage_index=12, stage_name="deploy")
    earlier = ctx.records(StageRecord)
    assert [r.index for r in earlier] == list(range(12))  # no record of this stage or later ones
    assert [type(r) for r in ctx.records(SensitivityRecord)] == [SensitivityRecord]
    assert ctx.last_record(SaveCompressedRecord).file == "stages/10_save_compressed/model.tt"
    assert ctx.last_record(BenchRecord) is None  # index 13 comes after this stage
    assert isinstance(ctx.last_record(TrainRecord), TrainRecord)
    ctx.stage_index = 3
    assert ctx.last_record(SensitivityRecord).chosen == {"fc1": 0.8, "fc2": 0.0}
    assert ctx.last_record(PruneRecord) is None


def test_last_record_with_accuracy_skips_records_without_one(tmp_path):
    from tinytamer.recipe import Context

    run = _run(
        tmp_path,
        [
            StageRecord(stage="train", index=0, accuracy=0.7),
            StageRecord(stage="evaluate", index=1, accuracy=0.8),
            StageRecord(stage="my_stage", index=2, note="no score"),
        ],
    )
    ctx = Context(recipe=None, rundir=run, data=None, stage_index=3, stage_name="x")
    assert ctx.last_record(StageRecord).stage == "my_stage"
    assert ctx.last_record(StageRecord, with_accuracy=True).accuracy == 0.8


def test_the_summary_renders_from_typed_records(tmp_path, capsys):
    from tinytamer.cli import _summary

    _summary(_run(tmp_path, _samples()))
    out = capsys.readouterr().out
    assert "3:prune" in out and "nonzero_params 400" in out and "bytes 900" in out
    assert "(4.4x smaller than float32)" in out  # dense_bytes / bytes of the .tt file
    assert (
        "onnxruntime int8  parity ok (max |d| 0.25; top-1 agreement 96.9%)  accuracy 90.00% (360 samples, onnxruntime)"
    ) in out
    assert "latency 1.234 ms" in out
    assert (
        "cortex-m4 int8  parity ok (max |d| 0.25; top-1 agreement 96.9%; bit-exact vs the "
        "C reference on 8 inputs)  accuracy 95.00% (100 of 360 samples, cortex-m4)"
    ) in out
    assert "instructions 123,456  est_cycles 150,000  flash_bytes 20,000  sram_bytes 6,000" in out
    assert "fastest: torch fp32 1.00x" in out
    assert "1:evaluate          accuracy 90.00% (36 of 360 samples, PyTorch)" in out
    assert "0:train" in out and "iter" not in out  # training intervals are not stage lines


def test_the_report_renders_from_typed_records(tmp_path):
    from tinytamer.viz.report import write_report

    run = _run(tmp_path, _samples())
    page = write_report(run).read_text()
    assert (run.path / "training.png").is_file()
    rows = re.findall(r"<tr><td>(\d+)</td><td>([a-z_]+)</td>", page)
    assert rows == [(str(r.index), r.stage) for r in _samples() if isinstance(r, StageRecord)]
    deploy = re.search(r"<tr><td>11</td>.*?</tr>", page).group(0)
    for cell in ("90.00%", "1,000", "400", "50,000", "2,048", "1.234", "2.0x"):
        assert f"<td>{cell}</td>" in deploy
    micro = re.search(r"<tr><td>12</td>.*?</tr>", page).group(0)
    assert "<td>150,000</td>" in micro
    assert "<td>zeros</td>" in re.search(r"<tr><td>3</td>.*?</tr>", page).group(0)


def test_the_report_draws_each_search_stages_progress(tmp_path):
    import json

    from tinytamer.viz.report import write_report

    run = _run(tmp_path, [r for r in _samples() if isinstance(r, (SposRecord, ProxylessRecord))])
    gens = [[{"arch": [0], "accuracy": a, "cost": {}, "generation": g}] for g, a in enumerate((0.3, 0.5, 0.4))]
    (run.path / "h.json").write_text(json.dumps({"top_k_per_generation": gens, "steps": [{"expected_latency": 9e5}]}))
    page = write_report(run).read_text()
    assert "spos: best fitness per generation" in page
    assert "proxylessnas: expected cost per architecture step" in page
    assert page.count("data:image/png;base64,") >= 2
    (run.path / "h.json").write_text("{not json")  # a damaged history: no plot, no crash
    assert "best fitness per generation" not in write_report(run).read_text()
