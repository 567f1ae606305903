"""A concise Ray Tune reporter: one line per finished unit or trial, a throttled heartbeat per epoch.
Imported only when Ray is (it subclasses ``tune.Callback``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from dplbench.orchestrate.timing import eta_text

HEARTBEAT_S = 15.0
UNIT_LINE = "dplbench_unit_line"  # a trial's report carrying a line to print as is (a sweep trial's finished unit)


def metrics_text(values: dict[str, Any], limit: int = 4) -> str:
    shown = [(k, v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return " ".join(f"{k}={v:.3g}" if k == "lr" else f"{k}={v:.2f}" for k, v in shown[:limit])


class Progress(tune.Callback):
    """Prints ``[done/total] status name metrics`` when a trial ends; ``describe`` turns a trial's config and its
    last result into (name, status, detail)."""

    def __init__(self, total: int, describe: Callable[[dict[str, Any], dict[str, Any]], tuple[str, str, str]]):
        self.total = total
        self.describe = describe
        self.finished = 0
        self.last_beat: dict[str, float] = {}
        self.start = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)  # looked up per call: the Tuner pickles its callbacks

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if UNIT_LINE in result:
            name, _, _ = self.describe(trial.config, {})
            self._print(f"{result[UNIT_LINE]}  (trial {name})")
            return
        if "epoch" not in result:
            return
        now = time.monotonic()
        if now - self.last_beat.get(trial.trial_id, 0.0) >= HEARTBEAT_S:
            self.last_beat[trial.trial_id] = now
            name, _, _ = self.describe(trial.config, result)
            extra = metrics_text({k: v for k, v in result.items() if k in ("loss", "lr", "acc", "train_acc")})
            total = result.get("epochs")
            epoch = f"{result['epoch']}/{total}" if total else str(result["epoch"])
            self._print(f"         {name}: epoch {epoch} {extra}".rstrip())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        name, status, detail = self.describe(trial.config, trial.last_result or {})
        self._print(f"[{self.finished:>{len(str(self.total))}}/{self.total}] {status:<6} {name}  {detail}  "
                    f"[{eta_text(self.finished, self.total, time.monotonic() - self.start)}]")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        name, _, _ = self.describe(trial.config, {})
        self._print(f"[{self.finished:>{len(str(self.total))}}/{self.total}] CRASH  {name}  (trial process failed; "
                    f"recorded as failed)")
