"""Evaluation metrics: FID with the pytorch-fid Inception-v3 (weights from a local file).

Importing this package does not import paddle; `FIDEvaluator` builds the network
on construction.
"""
from paddle_coopflow.metrics.fid import (FIDEvaluator, StatsAccumulator, compute_stats,
                                         frechet_distance, iter_image_folder,
                                         list_image_files, load_image_array, load_stats,
                                         save_stats, stats_from_source)

__all__ = ["FIDEvaluator", "StatsAccumulator", "compute_stats", "frechet_distance",
           "iter_image_folder", "list_image_files", "load_image_array", "load_stats",
           "save_stats", "stats_from_source"]
