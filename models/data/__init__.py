"""Datasets: scikit-learn digits (embedded), MNIST / Fashion-MNIST / CIFAR-10/100 from local folders."""

from models.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
