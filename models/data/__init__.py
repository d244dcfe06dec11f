"""Datasets: digits (scikit-learn, embedded), MNIST-1D (generated offline), MNIST / Fashion-MNIST / CIFAR from local folders."""

from models.data.datasets import DATASETS, Dataset, load_dataset, mnist1d_arrays

__all__ = ["DATASETS", "Dataset", "load_dataset", "mnist1d_arrays"]
