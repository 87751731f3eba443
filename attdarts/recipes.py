"""The paper's settings, in one place: data only, no imports of ours and no torch.

`SEARCH` holds the settings of a search (Att-DARTS, Nakai et al. 2020, following DARTS, Liu et
al. 2019, Section 3.1): "paper" is what the papers state, "authors" what the authors' code runs
where the two differ (README, "Paper, authors' code and attdarts"), "pc-darts" PC-DARTS's search
settings (Xu et al. 2020; for a space with partial channels such as
genotypes/spaces/pc_darts.geno), "pdarts" P-DARTS's (Chen et al. 2019; for a space with stages
such as genotypes/spaces/pdarts.geno), "drnas", "fair-darts" and "gdas" those of DrNAS (Chen et
al. 2021), FairDARTS (Chu et al. 2020) and GDAS (Dong and Yang 2019) for
genotypes/spaces/drnas.geno, fair_darts.geno and gdas.geno. `TRAIN` holds the evaluation
protocol: "cifar" (DARTS Section
3.2, 600 epochs, C=36, L=20) and "imagenet" (DARTS's mobile setting, 250 epochs, C=48, L=14).
Each row is complete, so a row is a valid set of defaults.

The run's inputs (space file, genotype, run directory) and the machine's settings (device,
threads) are not part of a recipe.
"""

from __future__ import annotations

from typing import Any

_PAPER_SEARCH: dict[str, Any] = {
    "dataset": "cifar10",
    "data_dir": None,
    "epochs": 50,
    "batch_size": 64,
    "recipe": "paper",
    "order": 1,
    "second_order": "darts",
    "clip": "weights",
    "bam_combine": None,
    "seed": 2,
    "channels": 16,
    "layers": 8,
    "train_portion": 0.5,
    "lr": 0.025,
    "lr_min": 0.0,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "arch_lr": 3e-4,
    "arch_betas": (0.5, 0.999),
    "arch_weight_decay": 1e-3,
    "arch_init": "zeros",
    "arch_grad_clip": None,
    "augment": True,
    "max_steps_per_epoch": None,
    "checkpoint_every": 0,
    "deterministic": False,
    "grouped": True,
    "compile_cells": False,
    "graphs": True,
    "arch_start_epoch": 0,
}

SEARCH: dict[str, dict[str, Any]] = {
    "paper": _PAPER_SEARCH,
    # the authors' code: a floor on the cosine schedule, randn-initialised alphas, their second
    # order and clipping, and BAM multiplying its gates
    "authors": {**_PAPER_SEARCH, "recipe": "authors", "lr_min": 0.001, "arch_init": "randn",
                "second_order": "authors", "clip": "authors", "bam_combine": "product"},
    # PC-DARTS (Xu et al., ICLR 2020, CIFAR-10 search): a larger batch and learning rates,
    # and 15 epochs that train the weights only before the architecture steps start
    "pc-darts": {**_PAPER_SEARCH, "recipe": "pc-darts", "batch_size": 256, "lr": 0.1,
                 "arch_lr": 6e-4, "arch_start_epoch": 15},
    # P-DARTS (Chen et al., ICCV 2019; chenxin061/pdarts, train_search.py): batch 96, alpha Adam
    # 6e-4 from 1e-3 randn with its gradients clipped to 5, 10 weight-only epochs (a stage's
    # warm-up where the space's stages do not give theirs); the stages themselves (cells, epochs,
    # candidates, skip dropout) are the space's, genotypes/spaces/pdarts.geno
    "pdarts": {**_PAPER_SEARCH, "recipe": "pdarts", "batch_size": 96, "arch_lr": 6e-4,
               "arch_init": "randn", "arch_grad_clip": 5.0, "arch_start_epoch": 10},
    # DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS, DARTS-space/train_search.py): the full
    # 20-cell C=36 network searched, batch 64, SGD 0.1 cosine to 0 over 50 epochs, alpha Adam
    # 6e-4 with 1e-3 weight decay (its L2 regulariser), randn alpha, 10 weight-only epochs (its
    # first stage's; the second stage needs search stages)
    "drnas": {**_PAPER_SEARCH, "recipe": "drnas", "channels": 36, "layers": 20, "lr": 0.1,
              "arch_lr": 6e-4, "arch_init": "randn", "arch_start_epoch": 10},
    # FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS, fairdarts/train_search.py):
    # batch 128, SGD 0.005 cosine to 0.001, alpha Adam 3e-3 with betas (0.9, 0.999), zero alpha
    "fair-darts": {**_PAPER_SEARCH, "recipe": "fair-darts", "batch_size": 128, "lr": 0.005,
                   "lr_min": 0.001, "arch_lr": 3e-3, "arch_betas": (0.9, 0.999)},
    # GDAS (Dong and Yang, CVPR 2019, configs/search-opts/GDAS-NASNet-CIFAR.config and the
    # search script): 250 epochs of batch 256, weight decay 5e-4, cosine to 0.001, 1e-3 randn
    # alphas, the clip norm over every parameter (alphas included). For a space with gdas
    # (genotypes/spaces/gdas.geno); what the settings cannot say is in README's differences
    "gdas": {**_PAPER_SEARCH, "recipe": "gdas", "epochs": 250, "batch_size": 256,
             "lr_min": 0.001, "weight_decay": 5e-4, "arch_init": "randn", "clip": "authors"},
}

_CIFAR_TRAIN: dict[str, Any] = {
    "dataset": "cifar10",
    "data_dir": None,
    "epochs": 600,
    "batch_size": 96,
    "channels": 36,
    "layers": 20,
    "auxiliary": True,
    "auxiliary_weight": 0.4,
    "lr": 0.025,
    "lr_min": 0.0,
    "lr_schedule": "cosine",
    "lr_gamma": 0.97,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "label_smoothing": 0.0,
    "cutout": 16,
    "drop_path_prob": 0.2,
    "drop_path_rule": "darts",
    "seed": 0,
    "deterministic": False,
    "amp": None,
    "channels_last": False,
    "grouped": True,
    "compile_cells": False,
    "graphs": True,
    "max_steps_per_epoch": None,
    "workers": 0,
}

TRAIN: dict[str, dict[str, Any]] = {
    "cifar": _CIFAR_TRAIN,
    "imagenet": {**_CIFAR_TRAIN, "dataset": "imagenet", "epochs": 250, "batch_size": 128,
                 "channels": 48, "layers": 14, "lr": 0.1, "lr_schedule": "exponential",
                 "lr_gamma": 0.97, "weight_decay": 3e-5, "label_smoothing": 0.1, "cutout": 0,
                 "drop_path_prob": 0.0, "workers": 4},
}

# Sizes every command accepts. A network needs 3 cells or more: the two reduction cells sit at
# L//3 and 2L//3, so with fewer there is no normal cell (a search has nothing to give its normal
# alpha a gradient, and the auxiliary head's input is the wrong size). The upper bounds are far
# beyond any published network (C=48, L=20) and stop a typing slip from spending minutes
# allocating tens of gigabytes.
MIN_LAYERS = 3
MAX_LAYERS = 200
MAX_CHANNELS = 512
# A seed is a whole number that torch's generator takes (0 to 2^64 - 1): a negative seed would
# also give genotype names such as `att_darts_seed-1`, which are not names.
MAX_SEED = 2**64 - 1
# Batch normalisation in training mode needs two images per batch: with one, a layer after global
# pooling (BAM's channel gate, the auxiliary head) has one value per channel and cannot be
# normalised, and elsewhere the statistics of one image are not a batch's.
MIN_BATCH_SIZE = 2


def checked_batch_size(value: int) -> int:
    """A batch size of `MIN_BATCH_SIZE` or more (the settings' validator; ValueError otherwise)."""
    if value < MIN_BATCH_SIZE:
        raise ValueError(f"a batch needs at least {MIN_BATCH_SIZE} images: batch normalisation "
                         "in training mode cannot normalise one")
    return value
