"""DrNAS and FairDARTS in the search loop: killed mid-epoch and resumed, a run writes the files of
an uninterrupted one (DrNAS draws from the run's method generator, saved in the checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, resume_search, run_search
from helpers import Interrupted, interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "drnas": "partial_channels(k=2), drnas(kl=0.001), auxiliary_skip, max_skip_connect(n=1)",
    "fair_darts": "fair_darts(threshold=0.6), partial_channels(k=2), auxiliary_identity",
}



@pytest.mark.parametrize("name", list(METHODS))
def test_resume_is_byte_identical(name, tmp_path, monkeypatch):
    space = tmp_path / "tiny.geno"
    space.write_text("space tiny { operations = [max_pool_3x3, skip_connect, sep_conv_3x3] "
                     "attentions = [identity, se] nodes = 2 keep = 2 location = after_every "
                     f"mixing = sum methods = [{METHODS[name]}] }}\n")
    config = SearchConfig(space_file=str(space), dataset="synthetic", epochs=3, batch_size=4,
                          channels=4, layers=3, max_steps_per_epoch=2, checkpoint_every=1,
                          deterministic=True)
    images = data.synthetic_dataset(train=True, size=32, resolution=8)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_search(config, reference, device="cpu", dataset=images)
    restore = interrupt_at(monkeypatch, Bilevel, "step", 4)  # epoch 2, step 2: the checkpoint holds epoch 2, step 1
    with pytest.raises(Interrupted):
        run_search(config, interrupted, device="cpu", dataset=images)
    restore()
    resume_search(interrupted, device="cpu", dataset=images)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in interrupted.iterdir())
    for file in names:
        if file == "metrics.jsonl":
            assert _without_timings(interrupted / file) == _without_timings(reference / file)
        elif file not in ("checkpoint.pt", "environment.json"):  # the latter: the sessions
            assert (interrupted / file).read_bytes() == (reference / file).read_bytes(), file


def _without_timings(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        for key in ("seconds", "images_per_s"):
            record.pop(key)
    return records
