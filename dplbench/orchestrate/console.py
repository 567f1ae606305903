"""What Ray, Ray Tune and MLflow may print on the console.

They log at INFO by default ("Started a local Ray instance", Tune's "Wrote the latest version of all result files",
MLflow's "Creating initial MLflow database tables", alembic's migration steps). dplbench prints its own progress,
so their loggers are held at ``run.log_level`` (``warning`` by default: their warnings and errors stay visible;
``--verbose`` or ``run.log_level=info`` shows everything). Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import logging
import os

LIBRARY_LOGGERS = ("ray", "mlflow", "alembic")


def hold_library_logs(name: str) -> int:
    """Set Ray's, MLflow's and alembic's loggers to ``name``, a ``vocabulary.LogLevel`` value (and MLflow's variable,
    read when a process, e.g. a Ray worker, imports it); returns the ``logging`` level. Call it again after
    importing one of them: importing configures its logger."""
    level = getattr(logging, str(name).upper())
    os.environ["MLFLOW_LOGGING_LEVEL"] = logging.getLevelName(level)
    for logger in LIBRARY_LOGGERS:
        logging.getLogger(logger).setLevel(level)
    return level
