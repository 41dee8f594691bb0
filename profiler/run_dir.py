"""The layer run directory: run.json + components.csv + tb/ traces, kept across runs and validated on resume.

Every config profiled into a directory stays there; a config profiled again replaces only its own rows and
trace. A config is kept (not profiled again) only when its recorded entry was measured with the same resolved
config, the same resolved options (warm-up and CPU defaults included: profiler.layer_plan) and on the same
GPU, and its rows in components.csv still match the fingerprint run.json holds for them.

One run at a time: a LayerRunDir holds the directory's lock (profiler.locks) from before it reads run.json
until `close()` (or the end of its `with` block), so a second run into the same directory waits and then
sees every config the first one wrote, instead of overwriting run.json with its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd

from models.config import ModelConfig, safe_name

from .errors import UserError
from .layer_profile import ProfileOptions
from .locks import DirectoryLock
from .outputs import write_atomic

RUN_FILES = ("run.json", "components.csv", "report.html")


def components_digest(frame: pd.DataFrame) -> str:
    """A fingerprint of one config's rows, kept in run.json: a components.csv cut or edited after the run no
    longer matches it, and that config is profiled again instead of being reported from damaged rows."""
    buffer = io.StringIO()
    frame.drop(columns=["config"], errors="ignore").to_csv(buffer, index=False, float_format="%.6g")
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()[:16]


def load_run_json(out: Path) -> dict:
    """run.json of a layer run directory ({} when there is none); a damaged one is the user's to fix."""
    path = out / "run.json"
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"--out: {path} is not valid JSON{where}; delete it or pass --fresh to start the run over") from None
    except RecursionError:
        raise UserError(f"--out: {path} nests too deeply to be a layer run; delete it or pass --fresh to start the run "
                        "over") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("configs", []), list) or \
            not all(isinstance(e, dict) and "name" in e for e in doc.get("configs", [])):
        raise UserError(f"--out: {path} is not a layer run (no 'configs' list of named entries); "
                        "delete it or pass --fresh to start the run over")
    return doc


def read_components(out: Path) -> tuple[dict[str, pd.DataFrame], str | None]:
    """components.csv per config, or ({}, why it cannot be read)."""
    path = out / "components.csv"
    if not path.exists():
        return {}, None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return {}, f"{path} does not parse ({type(exc).__name__})"
    if "config" not in df.columns:
        return {}, f"{path} has no 'config' column"
    return {name: group.reset_index(drop=True) for name, group in df.groupby("config", sort=False)}, None


def clear_run_files(out: Path) -> None:
    """--fresh: drop every config profiled into `out` before (its files and traces; other files stay)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def run_dir_lock(out: Path) -> DirectoryLock:
    return DirectoryLock(out, what="layer run")


class LayerRunDir:
    """One layer run directory, as a run reads it at the start and writes it after every config; holds the
    directory's lock until `close()` (use it as a context manager)."""

    def __init__(self, out: Path, *, fresh: bool = False):
        self.out = Path(out)
        self.lock = run_dir_lock(self.out).acquire()  # before anything is read: another run may be writing
        try:
            if fresh:
                clear_run_files(self.out)
            previous = load_run_json(self.out)
        except BaseException:
            self.lock.release()
            raise
        self.entries: dict[str, dict] = {e["name"]: e for e in previous.get("configs", [])}
        frames, self.problem = read_components(self.out)
        self.frames: dict[str, pd.DataFrame] = {name: f for name, f in frames.items() if name in self.entries}

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> LayerRunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def kept(self, cfg: ModelConfig, options: ProfileOptions, gpu_name: str | None) -> tuple[dict | None, str | None]:
        """(the entry measured before with this config, these options and this GPU, if its rows are intact;
        a notice when such an entry's rows are missing or edited, so the config is profiled again)."""
        entry = self.entries.get(cfg.name)
        if not entry or entry.get("status") != "ok" or entry.get("config") != cfg.to_dict() \
                or entry.get("options") != options.to_dict() or entry.get("gpu_name") != gpu_name:
            return None, None
        rows = self.frames.get(cfg.name)
        if rows is not None and entry.get("components_digest") == components_digest(rows):
            return entry, None
        return None, (f"{cfg.name}: its rows in {self.out / 'components.csv'} are missing or do not match run.json; "
                      "profiling it again")

    def drop(self, name: str) -> None:
        """Forget a config: its entry, its rows and its traces."""
        self.entries.pop(name, None)
        self.frames.pop(name, None)
        for path in (self.out / "tb").glob(f"{safe_name(name)}.*.pt.trace.json*"):
            path.unlink(missing_ok=True)

    def record(self, name: str, entry: dict, rows: pd.DataFrame | None = None) -> None:
        self.entries[name] = entry
        if rows is not None:
            self.frames[name] = rows

    def components(self) -> pd.DataFrame:
        return pd.concat(self.frames.values(), ignore_index=True) if self.frames else pd.DataFrame()

    def persist(self, environment: dict) -> dict:
        """Written after every config (atomically), so an interrupted run keeps what it measured."""
        doc = {"environment": environment, "configs": list(self.entries.values())}
        write_atomic(self.out / "run.json", json.dumps(doc, indent=2, default=str))
        if self.frames:
            write_atomic(self.out / "components.csv", self.components().to_csv(index=False))
        return doc
