"""The data layer: Sample records, loaders for every source, validation, statistics, exports."""

from holisafe.core.sample import ImageError, ImageRef, Sample
from holisafe.data.export import EXPORT_FORMATS, export_samples
from holisafe.data.loaders import FORMATS, Dataset, Problem, first, load_samples, read_dataset
from holisafe.data.stats import dataset_stats, plot_type_category

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "Dataset",
    "ImageError",
    "ImageRef",
    "Problem",
    "Sample",
    "dataset_stats",
    "export_samples",
    "first",
    "load_samples",
    "plot_type_category",
    "read_dataset",
]
