"""Evaluation, split by job.

    generate.py   CoopFlow samples in batches (flow proposal, then the Langevin flow), evaluation images
    fid.py        in-training FID (:class:`InTrainingFID`, owned by its caller) and its reference set
    tasks.py      the paper's test-time tasks (§5.3): reconstruction, inpainting, interpolation

The tools load models and configs with :mod:`paddle_coopflow.cli`.
"""
from .fid import FID_SEED_OFFSET, InTrainingFID, reference_images
from .generate import generate_samples, iter_samples, load_eval_images, to_uint8_images
from .tasks import (default_mask, infer_latent, inpaint, interpolate, interpolate_latents, mse_per_pixel,
                    recon_loss, reconstruct)

__all__ = ["FID_SEED_OFFSET", "InTrainingFID", "default_mask",
           "generate_samples", "infer_latent", "inpaint", "interpolate", "interpolate_latents",
           "iter_samples", "load_eval_images", "mse_per_pixel", "recon_loss", "reconstruct", "reference_images",
           "to_uint8_images"]
