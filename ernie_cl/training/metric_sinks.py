"""Where a run reports: ``metrics.jsonl`` (one JSON object per logged step), wandb, the console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

WANDB_MODES = ("disabled", "offline", "online")


class MetricsLog:
    """Append-only JSONL; on resume, lines past the checkpoint's step are dropped first so a
    resumed run's file reads exactly like an uninterrupted run's."""

    def __init__(self, path: Path, keep_until_step: int):
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= keep_until_step]
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class WandbSink:
    """Real wandb (offline by default: local run files under RUN/wandb, nothing sent)."""

    def __init__(self, mode: str, run_dir: Path, schedule, run_id: Optional[str] = None, group: Optional[str] = None):
        self.run = None
        self.run_id = run_id
        if mode == "disabled":
            return
        import wandb

        self.run = wandb.init(project="ernie-cl", name=Path(run_dir).name, dir=str(run_dir), mode=mode,
                              id=run_id, resume="allow", group=group, config=schedule.model_dump(mode="json"),
                              settings=wandb.Settings(console="off", silent=True))
        self.run_id = self.run.id

    def log_step(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def log_eval(self, result: dict[str, dict[str, Any]], step: int) -> None:
        if self.run is not None:
            flat = {f"eval/{task}/{k}": v for task, r in result.items() for k, v in r.items() if isinstance(v, (int, float))}
            self.run.log(flat, step=step)

    def close(self) -> None:
        """End the wandb run without a final summary (a stopped run that will be resumed)."""
        if self.run is not None:
            self.run.finish()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary["final_eval"] = summary["stages"][-1]["eval"] if summary["stages"] else {}
            self.run.finish()


def print_eval_table(title: str, result: dict[str, dict[str, Any]]) -> None:
    print(f"\nheld-out evaluation {title}:")
    print(f"  {'task':<26}{'loss':>9}{'metric':>10}{'baseline':>10}  beats baseline")
    for task, r in result.items():
        beats = "yes" if not math.isnan(r["metric"]) and r["metric"] > r["baseline"] else "no"
        print(f"  {task:<26}{r['loss']:>9.4f}{r['metric']:>10.4f}{r['baseline']:>10.4f}  {beats}  ({r['metric_name']})")
