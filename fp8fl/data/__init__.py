"""Real data: CIFAR-10/100, Speech Commands, FSDD; cached MFCC features; federated partitions.

``load_dataset(name, root, split)`` gives memory-mapped arrays (built once into ``$FP8FL_CACHE``),
``partition(ds, scheme, num_partitions, seed)`` index arrays into them, ``features(ds, kind)``
cached MFCCs, and ``prepare_images`` / ``prepare_mfcc`` model-ready (augmented) batches.
"""

from fp8fl.data.cache import (
    CACHE_ENV,
    DATA_ENV,
    DatasetCorruptError,
    DatasetNotFoundError,
    cache_root,
    data_root,
)
from fp8fl.data.dataset import Dataset, load_dataset
from fp8fl.data.features import MFCC_KINDS, features, mfcc, prepare_images, prepare_mfcc
from fp8fl.data.partitioners import SCHEMES, partition

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "MFCC_KINDS",
    "SCHEMES",
    "Dataset",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "cache_root",
    "data_root",
    "features",
    "load_dataset",
    "mfcc",
    "partition",
    "prepare_images",
    "prepare_mfcc",
]
