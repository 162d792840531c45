"""Offline proxy image-quality measure: FID/KID in the feature space of a small CIFAR-10 classifier
(see README.md). A bench tool, not part of the paddle_coopflow API."""
