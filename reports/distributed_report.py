"""The distributed layer profile's HTML report: paper Figures 2 and 11 with communication in them.

`distributed_report_sections` is pure (run.json dict + components and communication DataFrames ->
sections; the layer report can include them); `write_distributed_report` renders and writes the page.
`python -m reports.distributed_report DIR [DIR ...] --out FILE` re-renders one page from one or more
distributed run directories (say, t=1 and t=2 side by side).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .html import COLORS, Answer, Section, axis, layout, render_page, table_html
from .layer_report import FIGURE2, FIGURE2_COLORS, GEMMS

FUSED_ATTENTION = ("flash_attention", "sdpa_attention")
COMMUNICATION_COLOR = FIGURE2_COLORS.get("communication", "#ff9896")


def rank_mean(components: pd.DataFrame) -> pd.DataFrame:
    """Per config x t x pass x component: the mean over ranks of each rank's median time per step."""
    keys = ["config", "tensor_parallel", "pass", "component"]
    per_rank = components.groupby(keys + ["rank"], sort=False)["time_us"].sum().reset_index()
    return per_rank.groupby(keys, sort=False)["time_us"].mean().reset_index()


def _bars(df: pd.DataFrame) -> tuple[list[tuple], list[str]]:
    groups = list(dict.fromkeys(zip(df["config"], df["tensor_parallel"], df["pass"])))
    both = len(set(df["pass"])) > 1
    labels = [f"{c} t={t}" + ((" (fwd)" if p == "forward" else " (bwd)") if both else "") for c, t, p in groups]
    return groups, labels


def stacked_shares(components: pd.DataFrame, series: list[tuple[str, tuple | None, str]], title: str) -> dict:
    """One stacked bar per config x t (x pass): each series' share of the bar's kernel time, ranks averaged.
    A series with members None takes every component no other series names."""
    df = rank_mean(components)
    df["share"] = df["time_us"] / df.groupby(["config", "tensor_parallel", "pass"])["time_us"].transform("sum")
    named = {c for _, members, _ in series if members for c in members}
    groups, labels = _bars(df)
    data = []
    for label, members, color in series:
        chosen = ~df["component"].isin(named) if members is None else df["component"].isin(members)
        ys = [100 * df[chosen & (df["config"] == c) & (df["tensor_parallel"] == t) & (df["pass"] == p)]["share"].sum()
              for c, t, p in groups]
        if any(ys):
            data.append({"type": "bar", "name": label, "x": labels, "y": ys, "marker": {"color": color},
                         "text": [f"{y:.1f}%" if y >= 3 else "" for y in ys], "textposition": "inside",
                         "hovertemplate": f"{label}: %{{y:.1f}}%<extra>%{{x}}</extra>"})
    return {"data": data, "layout": layout(title, axis("config, tensor-parallel degree t (pass)", automargin=True),
                                           axis("% of summed kernel time (mean over ranks)", range=[0, 100]),
                                           barmode="stack")}


def figure2(components: pd.DataFrame) -> dict:
    """The layer report's Figure 2 categories (communication among them); "other" takes any component they
    do not name, so nothing is folded away unseen."""
    series = [(name, members, FIGURE2_COLORS.get(name, COLORS["other"])) for name, members in FIGURE2.items()]
    if not any("communication" in members for _, members, _ in series):
        series.append(("communication", ("communication",), COMMUNICATION_COLOR))
    series.append(("other", None, COLORS["other"]))
    return stacked_shares(components, series, "Share of layer kernel time with communication (paper Figure 2)")


def figure11(components: pd.DataFrame) -> dict:
    series = [(g, (g,), COLORS[g]) for g in GEMMS] + [
        ("fused attention", FUSED_ATTENTION, COLORS["flash_attention"]),
        ("communication", ("communication",), COMMUNICATION_COLOR), ("non-GEMM", None, COLORS["non_gemm"])]
    return stacked_shares(components, series, "Per-GEMM share with communication (paper Figure 11)")


def communication_figure(communication: pd.DataFrame) -> dict:
    """Per config x t x pass x region: transfer time, the wait for the late rank, and what overlapped."""
    df = communication.copy()
    passes = {"forward": "fwd", "backward": "bwd"}
    labels = [f"{c} t={t} {passes.get(p, p)}" + ("" if r == "communication" else f" {r.removeprefix('allreduce_')}")
              for c, t, p, r in zip(df["config"], df["tensor_parallel"], df["pass"], df["region"])]
    hidden = df["overlap_us"].clip(upper=df["time_us"])
    parts = [("transfer, exposed", (df["transfer_us"] - hidden).clip(lower=0), COMMUNICATION_COLOR),
             ("waiting for the late rank", df["wait_us"], "#b0b0b0"),
             ("overlapped with compute", hidden, COLORS["gemm"])]
    data = [{"type": "bar", "name": name, "x": labels, "y": values.round(2).tolist(), "marker": {"color": color},
             "hovertemplate": f"{name}: %{{y:.1f}} us<extra>%{{x}}</extra>"} for name, values, color in parts]
    return {"data": data, "layout": layout("All-reduce time per step and rank (median over steps)",
                                           axis("config, t, pass, block", automargin=True), "time per step (us)",
                                           barmode="stack")}


def distributed_answer(run: dict, components: pd.DataFrame) -> Answer | None:
    """Figure 2 with communication, per config and t, and a reading of each config's latency and how much of
    its kernel time the all-reduces take and leave exposed."""
    entries = run.get("configs", [])
    if components.empty or not entries:
        return None
    fig = figure2(components)
    fig["layout"]["title"]["text"] = "Where a tensor-parallel layer's time goes, communication included (Figure 2)"
    parts = []
    for e in entries:
        comm = e.get("communication", {})
        latency = e["latency_us"]["median"]
        shown = f"{latency / 1e3:,.2f} ms" if latency >= 1e4 else f"{latency:,.0f} \u00b5s"
        text = (f"{e['name']} at t={e['tensor_parallel']}: {shown} per step (slowest "
                f"rank), all-reduces {100 * comm.get('share_of_kernel_time', 0.0):.0f}% of kernel time")
        if comm.get("exposed_us") is not None:
            text += f", {comm['exposed_us']:,.0f} \u00b5s of it exposed (no compute alongside)"
        parts.append(text)
    failed = [f"{e['name']} t={e['tensor_parallel']}: {'; '.join(e['failed_checks'])}" for e in entries
              if e.get("failed_checks")]
    reading = "; ".join(parts) + ". " + (f"Failed checks: {'. '.join(failed)}." if failed else "Every check passed.")
    if not (run.get("environment") or {}).get("gpu_name"):
        reading += " A CPU run over gloo: the shares show the wiring, not NVLink or NCCL."
    return Answer("Where the time goes across ranks", fig, reading)


def summary_table(entries: list[dict]) -> pd.DataFrame:
    rows = []
    for e in entries:
        comm, c = e.get("communication", {}), e["config"]
        per_rank = {f"rank{p['rank']}_us": p["median"] for p in e["latency_us"]["per_rank"]}
        rows.append({
            "config": e["name"], "t": e["tensor_parallel"], "mode": e["mode"], "backend": e["backend"],
            "b": c["micro_batch_size"], "s": c["seq_length"], "h": c["hidden_size"], "a": c["num_attention_heads"],
            "dtype": c["dtype"], "latency_us": e["latency_us"]["median"], **per_rank, "busy_us": e["busy_us"],
            "comm_us": comm.get("time_us"), "comm_exposed_us": comm.get("exposed_us"),
            "comm_overlap_us": comm.get("overlap_us"),
            "comm_share_pct": 100 * comm.get("share_of_kernel_time", 0.0),
            "tflops_per_gpu": e["layer_tflops_per_gpu"], "coverage_pct": 100 * e["coverage"],
            "checks": "all pass" if not e.get("failed_checks") else "; ".join(e["failed_checks"]),
        })
    return pd.DataFrame(rows)


def distributed_report_sections(run: dict, components: pd.DataFrame, communication: pd.DataFrame) -> list[Section]:
    entries = run.get("configs", [])
    sections = [Section(
        "Summary",
        intro=("One Megatron-style tensor-parallel layer per config, one process per GPU (torchrun). "
               "<b>latency_us</b>: CUDA events (the host clock on a CPU) without the profiler, median over repetitions, of the slowest rank "
               "(the ranks finish each step together); rank<i>r</i>_us: each rank's own. <b>comm_us</b>: all-reduce "
               "kernel time per step and rank; <b>comm_exposed_us</b>: the part during which no compute kernel ran on "
               "another stream; <b>comm_share_pct</b>: of kernel time. <b>tflops_per_gpu</b>: Table II's per-GPU FLOPs "
               "over the latency."),
        tables=[table_html(summary_table(entries))])]
    if not components.empty:
        sections.append(Section("Where the time goes, communication included", figures=[figure2(components), figure11(components)],
                                intro="Each bar is one config at one t (and pass): shares of summed kernel time, "
                                      "averaged over the ranks. Communication is the all-reduce kernels (Megatron's "
                                      "f and g); at t=1 there are none."))
    if not communication.empty:
        cols = ["config", "tensor_parallel", "pass", "region", "kernels_per_step", "message_bytes", "bytes_moved",
                "time_us", "transfer_us", "wait_us", "overlap_us", "exposed_us", "overlap_pct", "algbw_gbps", "busbw_gbps"]
        sections.append(Section(
            "Communication", figures=[communication_figure(communication)],
            tables=[table_html(communication[[c for c in cols if c in communication]])],
            intro=("Per block (attention, MLP) and pass: forward is the all-reduce after the row-parallel GEMM (g), "
                   "backward the all-reduce of the column-parallel GEMMs' input gradient (f). <b>message_bytes</b>: the "
                   "(b, s, h) tensor all-reduced per step; <b>bytes_moved</b>: what a ring sends per rank, 2(t-1)/t of it. "
                   "<b>time_us</b>: kernel time per rank (mean over ranks); <b>transfer_us</b>: the least-waiting rank's "
                   "(an early rank's kernel also waits for the late one: <b>wait_us</b>). <b>algbw</b> = bytes / "
                   "transfer time, <b>busbw</b> = algbw x 2(t-1)/t (nccl-tests' convention, comparable with the "
                   "link's bandwidth); GB/s = 1e9 bytes/s.")))
        cols = [c for c in ("config", "tensor_parallel", "rank", "pass", "component", "role", "kind", "time_us",
                            "p10_us", "p90_us", "share_of_kernel_time", "tflops", "kernels_per_step") if c in components]
        sections.append(Section("Components per rank", tables=[table_html(components[cols])],
                                intro="Each rank's own attribution of its trace (the single-GPU attribution, per rank)."))
    for e in entries:
        rows = [{"rank": rank, **{k: c[k] for k in ("name", "status", "tolerance", "observed")}}
                for rank, checks in e.get("checks", {}).items() for c in checks]
        sections.append(Section(f"{e['name']} t={e['tensor_parallel']}: checks and traces",
                                intro=f"Merged trace (one process per rank, Perfetto): <code>{e.get('merged_trace', '')}</code>; "
                                      f"per rank: {', '.join(f'<code>{p}</code>' for p in e.get('traces', {}).values())}",
                                tables=[table_html(pd.DataFrame(rows))]))
    return sections


def write_distributed_report(run: dict, components: pd.DataFrame, communication: pd.DataFrame, path: Path) -> Path:
    env = run.get("environment", {})
    device = env.get("gpu_name") or f"CPU ({env.get('cpu', '')})"
    names = ", ".join(f"{e['name']} t={e['tensor_parallel']}" for e in run.get("configs", []))
    html = render_page("Tensor-parallel layer profile", distributed_report_sections(run, components, communication),
                       environment=env, subtitle=f"{names}, torch {env.get('torch')}, "
                                                 f"{(env.get('distributed') or {}).get('backend', '')}",
                       answer=distributed_answer(run, components), device=device, on_cpu=not env.get("gpu_name"))
    path.write_text(html)
    return path


def load_run(directory: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    run = json.loads((directory / "run.json").read_text())
    return run, pd.read_csv(directory / "components.csv"), pd.read_csv(directory / "communication.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.distributed_report",
                                     description="one report from one or more distributed layer-profile directories")
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    args = parser.parse_args(argv)
    runs = [load_run(d) for d in args.dirs]
    run = {"environment": runs[0][0].get("environment", {}), "configs": [e for r, _, _ in runs for e in r["configs"]]}
    write_distributed_report(run, pd.concat([c for _, c, _ in runs], ignore_index=True),
                             pd.concat([m for _, _, m in runs], ignore_index=True), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
