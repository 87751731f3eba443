"""What a training run writes and shows: its run directory's files and its progress bar.

`RunWriter` writes `config.json`, `genotype.geno`, `metrics.jsonl`, `last.pt` / `best.pt` and
`summary.json`, every file replaced atomically; `EpochProgress` is the per-epoch progress bar.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attdarts.runs import checkpoints, runtime

POSTFIX_EVERY = 20  # steps between progress-bar postfix updates (each one waits for the device)


class EpochProgress:
    """One progress bar per epoch on stderr: `epoch E/N`, the epoch's steps, and the running
    train loss and accuracy of this epoch (read from the device every `POSTFIX_EVERY` steps and
    at the last step, so most steps do not wait for it). The epoch's log line follows it."""

    def __init__(self, epochs: int, file=None) -> None:
        self.epochs = epochs
        self.file = file
        self.bar = None

    def start(self, epoch: int, steps: int) -> None:
        self.bar = runtime.progress(True, steps, 0, f"epoch {epoch + 1}/{self.epochs}",
                                    file=self.file, leave=False)

    def step(self, step: int, totals: torch.Tensor, count: int) -> None:
        self.bar.update(1)
        if (step + 1) % POSTFIX_EVERY == 0 or step + 1 == self.bar.total:
            loss_sum, correct = totals.tolist()
            self.bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}",
                                 acc=f"{100.0 * correct / max(count, 1):.1f}%")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunWriter:
    """Writes the run directory; every file is replaced atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def start(self, config, genotype, text, device, world_size, info, reported, total, history):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {
            **config.model_dump(mode="json"),
            "genotype": genotype.name,
            "device": str(device),
            "world_size": world_size,
            "threads": torch.get_num_threads(),
            "synthetic": info.synthetic,
            "train_images": info.num_samples,
            "num_classes": info.num_classes,
            "mean": list(info.mean),
            "std": list(info.std),
            "parameters": reported,
            "parameters_with_auxiliary": total,
        }
        checkpoints.atomic_write_text(self.run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
        checkpoints.atomic_write_text(self.run_dir / "genotype.geno", text)
        self._write_metrics(history)  # on resume, drop lines of epochs the checkpoint lacks

    def epoch_done(self, state: dict, improved: bool) -> None:
        if improved:
            checkpoints.save(self.run_dir / "best.pt", state)
        checkpoints.save(self.run_dir / "last.pt", state)
        self._write_metrics(state["history"])

    def finish(self, summary: dict) -> None:
        checkpoints.atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def _write_metrics(self, history: list[dict]) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in history)
        checkpoints.atomic_write_text(self.run_dir / "metrics.jsonl", lines)
