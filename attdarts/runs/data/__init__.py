"""Datasets and loaders for search and evaluation (`datasets`: what is loaded into memory;
`loaders`: augmentation and batches on the device). Callers import this package."""

from attdarts.runs.data.datasets import (
    CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN,
    IMAGENET_STD, KINDS, SPEC_HELP, SYNTHETIC_SIZES, DataError, DatasetSpec, ImageTensors, Stats,
    cache_dir, default_data_dir, embedded_dir, interleave_classes, load_cifar10_mini,
    load_dataset, parse_spec, spec_help, split, synthetic_dataset,
)
from attdarts.runs.data.loaders import (
    DeviceLoader, ImageNetLoader, LoaderInfo, check_batch_size, check_search_batch, cutout,
    derive_seed, evaluation_subset, make_loader, normalise, random_crop, random_flip,
    search_loaders,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "IMAGENET_MEAN", "IMAGENET_STD", "KINDS", "SPEC_HELP", "SYNTHETIC_SIZES", "DataError",
    "DatasetSpec", "DeviceLoader", "ImageNetLoader", "ImageTensors", "LoaderInfo", "Stats",
    "cache_dir", "check_batch_size", "check_search_batch", "cutout", "default_data_dir",
    "derive_seed", "embedded_dir", "evaluation_subset",
    "interleave_classes", "load_cifar10_mini", "load_dataset", "make_loader", "normalise",
    "parse_spec", "random_crop", "random_flip", "search_loaders", "spec_help", "split",
    "synthetic_dataset",
]
