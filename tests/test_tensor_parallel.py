"""Tensor parallelism (issue 14): the Megatron-style layer against the single-GPU layer over real gloo
processes on the CPU, the communication analysis on hand-made kernel tables, the distributed profile end
to end through torchrun, and the one-line error for too few GPUs."""

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import ModelConfig
from models.layer import build_layer, random_input
from models.tensor_parallel import (COMMUNICATION_REGIONS, build_tensor_parallel_layer, communication_plan,
                                    gather_shards, load_shards)
from profiler.distributed import DistributedJob, require_gpus, run_distributed_layer
from profiler.distributed.communication import (bandwidth_gbps, bytes_moved, check_collectives,
                                                communication_summary, overlap_with_compute)
from profiler.errors import UserError
from profiler.trace import read_trace_json

WORLD = 2
# float64 on both sides: the sharded layer sums the same products in another order (partial sums, then the
# all-reduce), so the two agree to rounding; 1e-10 is far above float64 rounding (~1e-15 here) and far
# below any real mistake (a bias added t times, a missing all-reduce: differences of order 1e-2)
TOLERANCE = 1e-10
VARIANTS = {
    "parallel-gelu-eager": dict(residual="parallel"),
    "sequential-gelu-eager": dict(residual="sequential"),
    "parallel-swiglu-rmsnorm-sdpa": dict(residual="parallel", activation="swiglu", intermediate_size=96,
                                         norm="rmsnorm", attention="sdpa"),
    "sequential-swiglu-full-rotary": dict(residual="sequential", activation="swiglu", intermediate_size=96,
                                          rotary_pct=1.0),
}


def tiny(**changes) -> ModelConfig:
    base = dict(name="tiny", hidden_size=64, num_attention_heads=4, num_layers=1, seq_length=16,
                micro_batch_size=2, vocab_size=128, dtype="float32", attention="eager")
    return ModelConfig(**{**base, **changes})


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _parity_rank(rank: int, world: int, store: str, out_dir: str) -> None:
    """One rank: the full layer (same seed everywhere) and this rank's shard of it, forward and backward."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # a broken collective fails the test, not hangs it
    torch.set_num_threads(1)
    diffs = {}
    for name, changes in VARIANTS.items():
        cfg = tiny(**changes)
        full = build_layer(cfg, seed=0).layer.double()
        # another seed than the full layer's: every value the comparison sees must come through load_shards
        sharded = build_tensor_parallel_layer(cfg.replace(tensor_parallel=world), seed=7).double()
        load_shards(sharded, full, rank, world)
        x_full = random_input(cfg, dtype=torch.float64, requires_grad=True)
        x_tp = x_full.detach().clone().requires_grad_(True)
        grad_out = torch.randn(x_full.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        y_full, y_tp = full(x_full), sharded(x_tp)
        y_full.backward(grad_out)
        y_tp.backward(grad_out)
        gathered = gather_shards({n: p.grad for n, p in sharded.named_parameters()})
        diffs[name] = {"output": _max_diff(y_full, y_tp), "input_grad": _max_diff(x_full.grad, x_tp.grad),
                       "weight_grads": {n: _max_diff(p.grad, gathered[n]) for n, p in full.named_parameters()},
                       "shard_shapes": {n: list(p.shape) for n, p in sharded.named_parameters()}}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(diffs))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Two real gloo processes run every variant once; each test below reads one behaviour off them."""
    out = tmp_path_factory.mktemp("tp-parity")
    mp.spawn(_parity_rank, args=(WORLD, str(out / "store"), str(out)), nprocs=WORLD)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sharded_forward_equals_single_gpu_layer(parity, variant):
    assert max(rank[variant]["output"] for rank in parity) <= TOLERANCE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sharded_input_gradient_equals_single_gpu_layer(parity, variant):
    # needs f's backward all-reduce: each rank alone holds only its heads' share of the input gradient
    assert max(rank[variant]["input_grad"] for rank in parity) <= TOLERANCE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gathered_weight_gradients_equal_single_gpu_layer(parity, variant):
    for rank in parity:
        worst = max(rank[variant]["weight_grads"].items(), key=lambda kv: kv[1])
        assert worst[1] <= TOLERANCE, f"{worst[0]}: max abs diff {worst[1]:.2e}"
        assert len(rank[variant]["weight_grads"]) >= 9  # every parameter, norms and biases included


def test_each_rank_holds_its_share_of_heads_and_columns(parity):
    shapes = parity[0]["parallel-gelu-eager"]["shard_shapes"]
    h, t = 64, WORLD
    assert shapes["attention.qkv_transform.weight"] == [3 * h // t, h]  # column-parallel: a/t heads
    assert shapes["attention.out_projection.weight"] == [h, h // t]  # row-parallel
    assert shapes["attention.out_projection.bias"] == [h]  # replicated, added after the all-reduce
    assert shapes["mlp.mlp_up.weight"] == [4 * h // t, h]
    assert shapes["mlp.mlp_down.weight"] == [h, 4 * h // t]


# ---- the communication analysis on hand-made kernel tables ---------------------------------------------------

def kernels(rows) -> pd.DataFrame:
    """(rank, step, pass, kind, stream, ts, end[, region]) -> an activities table as attribute() returns it."""
    df = pd.DataFrame(rows, columns=["rank", "step", "pass", "kind", "stream", "ts", "end", "region"][:len(rows[0])])
    df["component"] = np.where(df["kind"] == "communication", "communication", "mlp_up")
    df["dur_us"] = df["end"] - df["ts"]
    return df


def test_bus_bandwidth_follows_the_nccl_tests_convention():
    algbw, busbw = bandwidth_gbps([1e9, 1e9, 1e9], [1e4, 1e4, 1e4], 2)  # 1 GB in 10 ms
    assert algbw.tolist() == pytest.approx([100.0] * 3)
    assert busbw.tolist() == pytest.approx([100.0] * 3)  # 2(t-1)/t = 1 at t=2
    assert bandwidth_gbps(1e9, 1e4, 4)[1] == pytest.approx(150.0)
    assert bandwidth_gbps(1e9, 1e4, 8)[1] == pytest.approx(175.0)
    assert np.isnan(bandwidth_gbps(1e9, 0.0, 2)[0])
    assert bytes_moved(1000, 4) == pytest.approx(1500.0)  # a ring sends 2(t-1)/t of the buffer per rank


def test_overlap_counts_only_compute_on_other_streams():
    acts = kernels([
        (0, 1, "forward", "communication", 20, 10.0, 30.0),
        (0, 1, "forward", "gemm", 7, 0.0, 15.0),  # overlaps 10..15
        (0, 1, "forward", "non-gemm", 7, 25.0, 40.0),  # overlaps 25..30
        (0, 1, "forward", "non-gemm", 20, 15.0, 25.0),  # same stream as the collective: cannot overlap
    ])
    assert overlap_with_compute(acts)["overlap_us"].tolist() == pytest.approx([10.0])


def test_overlap_counts_concurrent_compute_once():
    acts = kernels([
        (0, 1, "forward", "communication", 20, 10.0, 30.0),
        (0, 1, "forward", "gemm", 7, 0.0, 20.0),
        (0, 1, "forward", "gemm", 8, 5.0, 25.0),  # runs alongside the first: the union is 10..25
    ])
    assert overlap_with_compute(acts)["overlap_us"].tolist() == pytest.approx([15.0])


def test_overlap_counts_only_the_same_rank():
    acts = kernels([(0, 1, "forward", "communication", 20, 10.0, 30.0),
                    (1, 1, "forward", "gemm", 7, 0.0, 40.0)])  # another GPU's GEMM hides nothing here
    assert overlap_with_compute(acts)["overlap_us"].tolist() == [0.0]


def test_nothing_overlaps_in_a_trace_without_streams():
    acts = kernels([(0, 1, "forward", "communication", None, 10.0, 30.0),
                    (0, 1, "forward", "gemm", None, 0.0, 40.0)])
    assert overlap_with_compute(acts)["overlap_us"].tolist() == [0.0]


def test_summary_takes_the_transfer_time_from_the_least_waiting_rank():
    plan = communication_plan(tiny(tensor_parallel=2), backward=False)
    rows = []
    for step in (1, 2, 3):
        # rank 0 arrives 30 us early and spins in the kernel; rank 1's kernel is the transfer itself
        rows += [(0, step, "forward", "communication", 20, 100.0, 150.0, "allreduce_attention"),
                 (1, step, "forward", "communication", 20, 130.0, 150.0, "allreduce_attention"),
                 (0, step, "forward", "communication", 20, 300.0, 320.0, "allreduce_mlp"),
                 (1, step, "forward", "communication", 20, 300.0, 320.0, "allreduce_mlp"),
                 (0, step, "forward", "gemm", 7, 0.0, 100.0, None), (1, step, "forward", "gemm", 7, 0.0, 130.0, None)]
    comm = overlap_with_compute(kernels(rows))
    summary = communication_summary(comm, plan, world_size=2).set_index("region")
    message = 2 * 16 * 64 * 4  # b * s * h float32
    attention = summary.loc["allreduce_attention"]
    assert (attention["time_us"], attention["transfer_us"], attention["wait_us"]) == pytest.approx((35.0, 20.0, 15.0))
    assert attention["message_bytes"] == message
    assert attention["busbw_gbps"] == pytest.approx(message / 20e-6 / 1e9)
    assert summary.loc["allreduce_mlp", "wait_us"] == pytest.approx(0.0)
    assert summary["exposed_us"].tolist() == pytest.approx(summary["time_us"].tolist())  # nothing overlapped


def test_collectives_check_compares_the_trace_with_the_plan():
    plan = communication_plan(tiny(tensor_parallel=2), backward=True)
    events = pd.DataFrame({"cat": ["cpu_op"] * 5, "name": ["c10d::allreduce_"] * 4 + ["aten::mm"],
                           "input_dims": [[[[2, 16, 64]]]] * 3 + [[[[2, 16, 32]]]] + [[[2, 3]]]})
    rows = check_collectives(events, pd.Series([1, 1, 1, 1, 1]), plan)
    assert [r["ok"] for r in rows] == [True, False]  # four per step, but one of the wrong size
    assert rows[1]["observed"] == str([2 * 16 * 32, 2 * 16 * 64])


def test_plan_has_one_all_reduce_per_block_and_pass():
    cfg = tiny(tensor_parallel=2, dtype="bfloat16")
    plan = communication_plan(cfg, backward=True)
    assert sorted((c.pass_name, c.region) for c in plan) == sorted(
        (p, r) for p in ("forward", "backward") for r in COMMUNICATION_REGIONS)
    assert {c.message_bytes for c in plan} == {2 * 16 * 64 * 2}
    assert communication_plan(tiny(), backward=True) == []  # t=1: nothing to sum


# ---- bad input and the distributed profile end to end --------------------------------------------------------

def test_too_few_gpus_is_a_one_line_user_error():
    with pytest.raises(UserError) as caught:
        require_gpus(torch.cuda.device_count() + 1 if torch.cuda.is_available() else 2)
    message = str(caught.value)
    assert "\n" not in message and "needs" in message and "GPUs" in message and "--device cpu" in message


def test_cli_says_it_needs_t_gpus(tmp_path, capsys):
    from cli.main import profiler_main as main

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs: nothing to refuse")
    try:
        code = main(["layer", "--config", "pythia-70m", "--tensor-parallel", "2", "--distributed", "--out", str(tmp_path)])
    except SystemExit:  # argparse refuses a flag it does not know
        if "--distributed" in capsys.readouterr().err:
            pytest.skip("profiler layer has no --distributed flag yet")
        raise
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "needs 2 GPUs" in err


def test_job_with_configs_of_another_t_is_refused():
    with pytest.raises(UserError, match="tensor_parallel 1 differs from --tensor-parallel 2"):
        DistributedJob(configs=(tiny().to_dict(),), out="x", tensor_parallel=2, device="cpu")


@pytest.mark.slow  # torchrun and two ranks, each its own torch import; the gloo parity above stays quick
def test_distributed_profile_over_gloo_writes_merged_results(tmp_path):
    cfg = tiny(hidden_size=128, seq_length=32, tensor_parallel=2)
    job = DistributedJob.for_configs([cfg], out=tmp_path, device="cpu", mode="forward+backward", warmup_steps=1,
                                     active_steps=2, bench_rep_ms=20, timeout_s=120)
    assert run_distributed_layer(job) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    entry = run["configs"][0]
    assert run["environment"]["distributed"]["world_size"] == 2
    assert entry["failed_checks"] == [] and entry["coverage"] >= 0.99
    assert [p["rank"] for p in entry["latency_us"]["per_rank"]] == [0, 1]
    communication = pd.read_csv(tmp_path / "communication.csv")
    assert set(communication["pass"]) == {"forward", "backward"}  # backward via autograd sequence numbers
    # one row per region (attention and MLP all-reduce), each moving one (b, s, h) float32 tensor
    assert set(communication["region"]) == {"allreduce_attention", "allreduce_mlp"}
    assert set(communication["message_bytes"]) == {2 * 32 * 128 * 4}
    components = pd.read_csv(tmp_path / "components.csv")
    assert set(components["rank"]) == {0, 1}
    assert "communication" in set(components.loc[components["pass"] == "backward", "component"])
    assert all((tmp_path / p).exists() for p in entry["traces"].values())
    merged = read_trace_json(tmp_path / entry["merged_trace"])["traceEvents"]
    names = {e["args"]["name"] for e in merged if e.get("name") == "process_name"}
    assert {n.split(":")[0] for n in names} >= {"rank 0", "rank 1"}  # then the process's own name
    assert not (tmp_path / "report.html").exists()  # the library writes data; the command writes the report
    from reports.distributed_report import load_run, write_distributed_report

    assert write_distributed_report(*load_run(tmp_path), tmp_path / "report.html").stat().st_size > 100_000
