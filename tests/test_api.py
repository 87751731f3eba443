"""The Python API (issue 15, item 1): `attdarts.create_network`, `load_network`, `train`,
`search`, and README's example, run as written (tiny: random images, one short epoch)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = dict(dataset="synthetic", epochs=1, channels=4, layers=3, batch_size=4,
                  max_steps_per_epoch=2, device="cpu")


def test_importing_attdarts_loads_no_torch_and_offers_the_api_lazily():
    code = ("import sys, attdarts\n"
            "assert 'torch' not in sys.modules\n"
            "assert {'create_network', 'load_network', 'search', 'train'} <= set(dir(attdarts))\n"
            "assert 'darts_v2' in attdarts.zoo_names()\n"
            "assert callable(attdarts.create_network) and 'torch' not in sys.modules\n"
            "try:\n"
            "    attdarts.no_such_thing\n"
            "except AttributeError as error:\n"
            "    assert 'no_such_thing' in str(error)\n"
            "else:\n"
            "    raise SystemExit('no AttributeError')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_create_network_gives_the_papers_parameter_count(one_thread):
    import attdarts
    from attdarts.language.transform import read_genotype

    network = attdarts.create_network("darts_v2")
    assert sum(p.numel() for p in network.parameters()) == 3_349_342
    assert network.auxiliary_head is None and network.input_size == 32
    # the same genotype as a path and as an IR object, with the auxiliary head (DARTS: +476,426)
    path = ROOT / "genotypes" / "darts_v2.geno"
    for genotype in (path, str(path), read_genotype(path)):
        small = attdarts.create_network(genotype, channels=4, layers=3, auxiliary=True)
        assert small.auxiliary_head is not None and len(small.cells) == 3


def test_create_network_takes_timms_in_chans_and_num_classes(one_thread):
    """As timm users write it. By hand, against DARTS's 3,349,342: the stem's 3x3 convolution
    (3C = 108 filters) loses 2 input channels, 2 * 108 * 9 weights; the classifier (576 inputs,
    4 x 4C after the last cell) gains 37 classes of 576 weights and a bias."""
    import attdarts
    import torch

    network = attdarts.create_network("darts_v2", in_chans=1, num_classes=47)
    assert network.classifier.in_features == 576
    assert sum(p.numel() for p in network.parameters()) == 3_349_342 - 2 * 108 * 9 + 37 * 577
    small = attdarts.create_network("darts_v2", channels=4, layers=3, in_chans=1, num_classes=5)
    images, labels = torch.randn(2, 1, 32, 32), torch.tensor([0, 4])
    loss = torch.nn.functional.cross_entropy(small(images), labels)  # logits, not a tuple
    loss.backward()
    assert small.stem[0].weight.grad.shape == (12, 1, 3, 3)


def test_create_network_takes_the_dataset_recipe_and_options(one_thread):
    import attdarts

    network = attdarts.create_network("att_darts", dataset="imagenet", layers=3, num_classes=7)
    assert network.imagenet_stem and network.input_size == 224 and network.num_classes == 7
    assert network.classifier.out_features == 7
    assert network.cells[0].channels_out == 4 * 48  # C=48 from the ImageNet recipe


def test_unknown_names_are_refused_with_the_zoo_and_a_suggestion():
    from attdarts import api

    with pytest.raises(api.GenotypeNotFound, match=r"'darts_v3' is neither a genotype file.*"
                                                   r"did you mean 'darts_v2'"):
        api.resolve_genotype("darts_v3")
    with pytest.raises(api.GenotypeNotFound, match=r"zoo space .*att_darts"):
        api.search("not_a_space", **TINY_TRAIN)


def test_train_then_load_network_returns_the_trained_network(tmp_path, one_thread):
    import torch

    import attdarts

    result = attdarts.train("darts_v2", out=tmp_path / "run", **TINY_TRAIN)
    assert result.run_dir == tmp_path / "run" and (tmp_path / "run" / "last.pt").is_file()
    assert 0.0 <= result.last_top1 <= 100.0 and result.best_top1 >= result.last_top1
    assert result.parameters == sum(
        p.numel() for name, p in result.model.named_parameters() if "auxiliary" not in name)

    loaded = attdarts.load_network(tmp_path / "run")
    network, genotype, config = loaded
    assert not network.training and genotype.name == "darts_v2" and loaded.epoch == 1
    assert config.channels == 4 and config.dataset == "synthetic"
    images = torch.randn(2, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), result.model(images), rtol=0, atol=0)
    best = attdarts.load_network(tmp_path / "run", which="best")
    assert best.checkpoint.name == "best.pt"


def test_load_network_refuses_foreign_and_damaged_files(tmp_path, one_thread):
    from attdarts import api
    from attdarts.runs.checkpoints import CheckpointError

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "checkpoint.pt").write_bytes(b"")
    cases = {
        tmp_path / "junk.pt": "truncated or corrupt",
        tmp_path / "empty.pt": "is empty",
        tmp_path / "missing.pt": "no such checkpoint",
        tmp_path: "no such checkpoint",
        tmp_path / "search": "is a search run, not a training run",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            api.load_network(path)


def test_search_takes_a_space_object_and_returns_its_result(tmp_path, one_thread):
    import attdarts
    from attdarts.language.transform import read_space

    space = read_space(ROOT / "genotypes" / "spaces" / "darts.geno")
    result = attdarts.search(space, out=tmp_path / "s", **{**TINY_TRAIN, "max_steps_per_epoch": 1})
    assert result.run_dir == tmp_path / "s" and result.epochs == 1
    assert (tmp_path / "s" / "genotype.geno").is_file() and result.genotype.name == "darts_seed2"
    assert 0.0 <= result.metrics["val_accuracy"] <= 100.0 and result.metrics["accuracy_unit"] == "%"
    # the space object became the run's space file of record, so the run can be resumed
    import json

    space_file = Path(json.loads((tmp_path / "s" / "config.json").read_text())["space_file"])
    assert space_file == (tmp_path / "s" / "space.geno").resolve()
    assert read_space(space_file) == read_space(ROOT / "genotypes" / "spaces" / "darts.geno")


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section should hold one python block"
    return blocks[0]


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_example(), "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "3349342"
    assert printed[1].startswith("runs/api-train ")
    assert (tmp_path / "runs" / "api-train" / "last.pt").is_file()
    assert (tmp_path / "runs" / "api-search" / "genotype.geno").is_file()
