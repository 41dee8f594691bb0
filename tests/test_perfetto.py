"""Traces a person can read (issue 12, item 6): the layer's component names written onto the GPU timeline of
the committed H100 traces, the file still loading as before, and the annotated trace folder opened by the
two trace tools a reader may reach for: torch-tb-profiler (TensorBoard's plugin) and Holistic Trace Analysis
(`traceinsight` on PyPI). Those two tests skip, saying why, when the package is absent.
"""

import gzip
import importlib
import json
import shutil
from pathlib import Path

import pytest

from profiler.attribution import attribute_detailed
from profiler.perfetto import COMPONENT_CATEGORY, COMPONENT_TRACK, annotate_trace, slice_name
from profiler.trace import DEVICE_CATEGORIES, HOST_CATEGORIES, load_trace, read_trace_json

TRAIN = Path(__file__).parent / "fixtures" / "h100" / "layer" / "pythia-1b-train" / "tb" / "pythia-1b.1795430688633088519.pt.trace.json.gz"
WORKER = "pythia-1b"  # torch-tb-profiler names a run's worker after the file: WORKER.SPAN.pt.trace.json.gz


@pytest.fixture(scope="module")
def train():
    events = load_trace(TRAIN)
    return events, attribute_detailed(events)[0]


@pytest.fixture(scope="module")
def annotated(train, tmp_path_factory):
    _, acts = train
    folder = tmp_path_factory.mktemp("tb")
    return annotate_trace(TRAIN, acts, folder / f"{WORKER}.1.pt.trace.json.gz", rank=0)


def _slices(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("cat") == COMPONENT_CATEGORY]


def test_every_attributed_kernel_gets_a_named_slice_on_a_gpu_track(train, annotated):
    _, acts = train
    trace = read_trace_json(annotated)
    slices = _slices(trace)
    assert len(slices) == len(acts) == 520
    kernels = [e for e in trace["traceEvents"] if e.get("cat") == "kernel"]
    assert {e["pid"] for e in slices} == {e["pid"] for e in kernels} == {0}  # the GPU's own process
    (tid,) = {e["tid"] for e in slices}
    assert tid not in {e["tid"] for e in kernels}
    names = [e for e in trace["traceEvents"] if e.get("ph") == "M" and e.get("name") == "thread_name"
             and e.get("tid") == tid]
    assert [e["args"]["name"] for e in names] == [COMPONENT_TRACK]
    by_start = {(e["ts"], e["args"]["kernel"]): e for e in slices}
    for r in acts.to_dict("records"):
        s = by_start[(r["ts"], r["name"])]
        assert s["dur"] == r["dur_us"] and s["name"] == slice_name(r["component"], r["role"])
    assert {s["name"] for s in slices} >= {"qkv_transform.fprop", "qkv_transform.dgrad", "qkv_transform.wgrad",
                                           "flash_attention", "norm", "residual_bias"}
    assert trace["distributedInfo"] == {"rank": 0}


def test_the_annotated_file_loads_into_the_same_events_and_annotating_twice_changes_nothing(train, annotated, tmp_path):
    events, acts = train
    assert COMPONENT_CATEGORY not in HOST_CATEGORIES + DEVICE_CATEGORIES  # categories load_trace reads
    assert load_trace(annotated).equals(events)
    plain = annotate_trace(annotated, acts, tmp_path / "again.pt.trace.json")  # not .gz: written plain
    assert plain.read_bytes().startswith(b"{")
    assert len(_slices(read_trace_json(plain))) == len(acts)
    with gzip.open(annotated, "rt") as f:
        assert json.load(f)["traceEvents"]


def _import_or_skip(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # absent, or installed without a dependency it imports
        pytest.skip(f"{package} is not importable here ({exc}); pip install {package} to run this test")


def test_torch_tb_profiler_loads_the_annotated_trace_folder(annotated):
    _import_or_skip("torch_tb_profiler", "torch-tb-profiler")
    from torch_tb_profiler import io
    from torch_tb_profiler.profiler.loader import RunLoader

    run = RunLoader("layer", str(annotated.parent), io.Cache()).load()  # what TensorBoard's plugin does per run
    assert run.workers == [WORKER]
    assert [v.name for v in run.views] == ["overall", "operator", "kernel", "trace"]
    (span,) = run.get_spans(WORKER)
    profile = run.get_profile(WORKER, span)
    kernels = {row[0] for row in profile.kernel_table["data"]["rows"]}
    assert "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT" in kernels
    assert any("flash_bwd_dq_dk_dv" in k for k in kernels)
    assert not any(k in kernels for k in ("qkv_transform.fprop", "flash_attention"))  # slices are not kernels


def test_holistic_trace_analysis_loads_the_annotated_trace_folder(annotated, tmp_path):
    _import_or_skip("hta.trace_analysis", "traceinsight")
    from hta.trace_analysis import TraceAnalysis

    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(TRAIN, plain / TRAIN.name)
    breakdowns = []
    for folder in (annotated.parent, plain):
        analysis = TraceAnalysis(trace_dir=str(folder))
        assert list(analysis.t.get_ranks()) == [0]
        names = set(analysis.t.get_trace(0)["name"].map(analysis.t.symbol_table.get_sym_table().__getitem__))
        assert "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT" in names
        breakdowns.append(analysis.get_gpu_kernel_breakdown(visualize=False)[0].set_index("kernel_type")["sum"])
    assert breakdowns[0].equals(breakdowns[1])  # the component slices are not counted as GPU kernels
    assert breakdowns[0]["COMPUTATION"] > 0.95 * breakdowns[0].sum()
