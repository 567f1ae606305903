"""The output folder of a run (``run.output_dir``) and every place inside it.

One :class:`Workspace` owns the layout; no other module spells a subfolder or file name of the output folder::

    <output_dir>/
      runs/<protocol>/<method>/<dataset>/*.json   one verified result file per unit (the source of truth)
      cache/                                      frozen features, few-shot and long-tail index files
      checkpoints/                                shared source models of transfer units; resume/ mid-training
      tables/  plots/  sweeps/                    rebuilt reports and sweep summaries
      index.md  index.html                        one page over every protocol: tables, plots, failures, MLflow
      logs/<unit>.log                             the console output and log lines of each unit
      ray/                                        Ray Tune experiment folders
      mlflow.db  mlartifacts/                     the default MLflow tracking database and artifact store
      mlflow.lock                                 serialises creating/migrating the database between runs
      leases/<config hash>.json                   the live run computing a unit (host, pid, process start)
      sessions/<pid>-<start>.json                 the local Ray instance of each live run (one per invocation)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, output_dir: str | Path) -> Workspace:
        """The workspace of ``output_dir`` (made absolute: Ray trials run in other working directories)."""
        return cls(Path(output_dir).expanduser().resolve())

    def require_writable(self) -> None:
        """ConfigError unless the output folder is (or can be created as) a writable folder: checked before Ray or
        MLflow start, so the mistake costs one line, not a traceback from deep inside a trial."""
        import os

        from dplbench.errors import ConfigError

        where = f"run.output_dir={self.root}"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{where} is a file, not a folder")
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"{where} cannot be created: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == self.root else f"cannot be created ({existing} is not writable)"
            raise ConfigError(f"{where} {what}")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def protocol_runs(self, protocol: str) -> Path:
        return self.runs / protocol

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def knowledge(self) -> Path:
        """Offline LLM knowledge caches (``dplbench build-knowledge``), one folder per dataset, LLM and question
        set."""
        return self.cache / "knowledge"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def resume_checkpoints(self) -> Path:
        return self.checkpoints / "resume"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def index_md(self) -> Path:
        return self.root / "index.md"

    @property
    def index_html(self) -> Path:
        return self.root / "index.html"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def unit_log(self, unit_name: str) -> Path:
        return self.logs / f"{unit_name}.log"

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        """``sqlite:////abs/mlflow.db`` (four slashes: an absolute path, independent of any working directory)."""
        return "sqlite:///" + self.mlflow_db.as_posix()

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def mlflow_lock(self) -> Path:
        return self.root / "mlflow.lock"

    @property
    def leases(self) -> Path:
        return self.root / "leases"

    def lease(self, config_hash: str) -> Path:
        return self.leases / f"{config_hash}.json"

    @property
    def leases_lock(self) -> Path:
        return self.leases / ".lock"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    def session_record(self, pid: int, start: int | None) -> Path:
        """The Ray session record of the invocation with process id ``pid`` started at ``start`` (clock ticks)."""
        return self.sessions / f"{pid}-{start if start is not None else 0}.json"


def knowledge_cache(knowledge_root: str | Path, dataset: str, llm_id: str, questions_key: str) -> Path:
    """The knowledge cache of one dataset, LLM and question set under a workspace's ``knowledge`` folder."""
    return Path(knowledge_root) / dataset / llm_id / questions_key
