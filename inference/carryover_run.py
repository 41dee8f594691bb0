"""The carry-over comparison as a library (`python -m inference carryover`): one set of shapes, training
against inference.

1. the layer profiler over the shapes at their training b and s, forward and forward+backward
   (DIR/layer-forward, DIR/layer-forward+backward), unless profiles are given: a few seconds per shape, so
   a run stopped early still has every shape's training side;
2. the inference bench over the same shapes (DIR/bench: transformers and MII, each prompt length and batch);
3. the decode-vs-batch sweep (DIR/decode: batch 1..64 at a short prompt);
4. the interleaved rounds (DIR/rounds, inference/carryover_measure.py): training fwd+bwd, prefill and decode
   of every shape in shuffled rounds, decode on neox-graph (CUDA-graph replays near the weight + KV floor):
   the basis of the headline verdicts; run before the bench, so the bench's MII worker gets the GPU after;
then the command writes the report (DIR/carryover.html, carryover.csv, verdicts.txt) from what
inference/carryover_data.py loads. Every step resumes: a rerun measures only what is missing. DIR/carryover.json records what the report reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from profiler.errors import UserError

from .checkpoints import resolve_model
from .spec import BenchSpec

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "carryover.json"
LAYER_MODES = ("forward", "forward+backward")
LAYER_ATTENTIONS = ("flash", "sdpa", "eager")


def layer_dir(out: Path, mode: str, attention: str, primary: str) -> Path:
    """DIR/layer-{mode} for the headline attention (as before a second one existed), DIR/layer-{mode}-{attention}
    for the others."""
    return Path(out) / (f"layer-{mode}" if attention == primary else f"layer-{mode}-{attention}")


def profiled_every_shape(run_json: Path, names: list[str]) -> bool:
    """A profile a later call keeps: its run.json has every shape, profiled (not failed)."""
    try:
        configs = json.loads(run_json.read_text()).get("configs", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    done = {c.get("name") for c in configs if c.get("status", "ok") == "ok"}
    return set(names) <= done


@dataclass(frozen=True)
class CarryoverSpec:
    bench: BenchSpec  # its `out` is DIR/bench
    baseline: str
    out: Path
    layer_profiles: tuple[Path, ...] = ()  # given: used as they are; none: profiled here
    # the layer profiler's attention, first = the verdicts' headline; a second (e.g. eager, the attention
    # transformers 4.38 and DeepSpeed's injected kernels run) gives a second set of verdicts
    layer_attention: tuple[str, ...] = ("flash",)
    layer_args: tuple[str, ...] = ()  # more `python -m profiler layer` flags, e.g. ("--no-floor",)
    run_layer: bool = True
    run_bench: bool = True  # False: only the sweep (and the report), e.g. in a later call on another machine
    decode: BenchSpec | None = None  # the decode-vs-batch sweep (its `out` is DIR/decode); None: skipped
    rounds: object | None = None  # carryover_measure.RoundsSpec (its `out` is DIR/rounds); None: skipped

    def __post_init__(self) -> None:
        names = [resolve_model(m).name for m in self.bench.models]
        if self.baseline not in names:
            raise UserError(f"--baseline: '{self.baseline}' is not one of --models ({', '.join(names)}); "
                            "name the shape the others are normalised to")
        for attention in self.layer_attention:
            if attention not in LAYER_ATTENTIONS:
                raise UserError(f"--layer-attention: '{attention}' is not one of {', '.join(LAYER_ATTENTIONS)} "
                                "(comma-separated, e.g. flash,eager)")
        if not self.layer_attention:
            raise UserError("--layer-attention: give at least one of " + ", ".join(LAYER_ATTENTIONS))
        for path in self.layer_profiles:
            if not (Path(path).is_file() or (Path(path) / "run.json").is_file()):
                raise UserError(f"--layer-profile: {path} is neither a run.json nor a directory holding one; "
                                "give the --out of `python -m profiler layer`")


@dataclass
class CarryoverOutcome:
    layer_profiles: list[Path]
    notes: list[str]


def layer_config_ref(ref: str) -> str:
    """What `python -m profiler layer --config` takes for a bench model: its name or file, or the
    config.json of a checkpoint directory."""
    path = Path(ref).expanduser()
    return str(path / "config.json") if path.is_dir() else ref


def profile_layers(models: tuple[str, ...], out: Path, mode: str, *, attention: str, device: str,
                   extra: tuple[str, ...] = (), log: Callable[[str], None] = print) -> tuple[Path | None, str]:
    """The layer profiler's CLI in a process of its own (its GPU memory is returned before the bench
    runs), resuming in `out`; (its run.json if one was written, a note on how it went)."""
    cmd = [sys.executable, "-m", "profiler", "layer", "--mode", mode, "--attention", attention, "--device", device,
           "--out", str(out), *extra]
    for ref in models:
        cmd += ["--config", layer_config_ref(ref)]
    log(f"layer profiles ({mode}): {' '.join(cmd[1:])}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    run_json = out / "run.json"
    # the profiler's exit codes: 0 all good, 1 a config failed (e.g. out of memory), 2 a user mistake,
    # 3 a self-check failed; whatever it profiled is in run.json and is used, with the note
    note = "" if code == 0 else f"`python -m profiler layer --mode {mode} --attention {attention}` exited with status {code}"
    return (run_json if run_json.is_file() else None), note


def decode_spec(bench: BenchSpec, out: Path, *, batches: tuple[int, ...], engines: tuple[str, ...],
                prompt_len: int, new_tokens: int, repeats: int | None = None) -> BenchSpec:
    """The decode-vs-batch sweep: the comparison's settings at one short prompt and batch 1..64, on the
    same checkpoints (built with the main bench's positions)."""
    return replace(bench, batches=batches, engines=engines, prompt_lens=(prompt_len,), new_tokens=new_tokens,
                   repeats=repeats or bench.repeats, out=out,
                   reserve_context=max(bench.max_context, bench.reserve_context))


def _relative(path: Path, root: Path) -> str:
    """A path inside the output directory is kept relative to it, so the directory can be moved (the GPU
    evidence is packed on one machine and rendered on another)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def write_manifest(spec: CarryoverSpec, layer_profiles: list[Path], notes: list[str]) -> Path:
    path = spec.out / MANIFEST
    path.write_text(json.dumps({
        "baseline": spec.baseline, "models": list(spec.bench.models),
        "model_names": [resolve_model(m).name for m in spec.bench.models], "bench": spec.bench.to_dict(),
        "decode": spec.decode.to_dict() if spec.decode else None,
        "rounds": spec.rounds.to_dict() if spec.rounds else (_previous(spec.out).get("rounds")),
        "layer_profiles": [_relative(p, spec.out) for p in layer_profiles],
        "layer_attention": list(spec.layer_attention), "notes": notes}, indent=1))
    return path


def manifest_path(out: Path, recorded: str) -> Path:
    """A path the manifest records, as seen from here (relative ones are relative to the output directory)."""
    return Path(recorded) if Path(recorded).is_absolute() else Path(out) / recorded


def _previous(out: Path) -> dict:
    try:
        return json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_manifest(out: Path) -> dict:
    try:
        return json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"--report-only: {out} has no readable {MANIFEST}; run the carryover command there first") from None


def run_carryover(spec: CarryoverSpec, *, log: Callable[[str], None] = print, progress: bool = False) -> CarryoverOutcome:
    from .bench import run_bench

    spec.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    layer_profiles = [Path(p) for p in spec.layer_profiles]
    if not layer_profiles and not spec.run_layer:  # a later step of the same comparison keeps its profiles
        previous = [manifest_path(spec.out, p) for p in _previous(spec.out).get("layer_profiles", [])]
        layer_profiles = [p for p in previous if p.exists()]
    write_manifest(spec, layer_profiles, notes)  # the report can be rendered from whatever got done
    if not layer_profiles and spec.run_layer:
        device = spec.bench.device or ("cuda" if _cuda() else "cpu")
        names = [resolve_model(m).name for m in spec.bench.models]
        for attention in spec.layer_attention:
            for mode in LAYER_MODES:
                out = layer_dir(spec.out, mode, attention, spec.layer_attention[0])
                if profiled_every_shape(out / "run.json", names):  # an earlier call's, complete: kept as measured
                    log(f"layer profiles ({mode}, {attention}): every shape already in {out}; kept")
                    layer_profiles.append(out / "run.json")
                    continue
                path, note = profile_layers(spec.bench.models, out, mode, attention=attention, device=device,
                                            extra=spec.layer_args, log=log)
                if path is not None:
                    layer_profiles.append(path)
                if note:
                    notes.append(note)
                    log(f"note: {note}")
        write_manifest(spec, layer_profiles, notes)
    if spec.rounds is not None:
        from .carryover_measure import run_rounds

        run_rounds(spec.rounds, log=log)
    if spec.run_bench:
        run_bench(spec.bench, log=log, progress=progress)
    if spec.decode is not None:
        run_bench(spec.decode, log=log, progress=progress)
    return CarryoverOutcome(layer_profiles, notes)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
