"""Image transforms in numpy/PIL (paddle.vision transforms need cv2 for numpy input).

The CoopFlow pipeline (the official code's data loading) is torchvision's Resize(size) →
CenterCrop(size) → ToTensor → Normalize(0.5, 0.5). Resize with an int resizes the *short*
side with PIL bilinear (which antialiases when downscaling); these functions reproduce it
exactly. Images with more than 8 bits per sample (16-bit grey PNGs) are first scaled to
8 bits, so their full range maps to [0, 255] and then to [-1, 1].
"""
from __future__ import annotations

import numpy as np
from PIL import Image


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit grey image (PIL mode 'I;16*', or 'I' as older Pillow opens 16-bit PNGs) to 8-bit 'L'.

    v8 = round(v16 / 257), so 0 → 0 and 65535 → 255 (PIL's own conversion clips every value above
    255 to white). Other modes are returned unchanged.
    """
    if img.mode not in HIGH_DEPTH_MODES:
        return img
    arr = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size`, keeping aspect ratio (torchvision Resize(int)).

    The long side is `int(size * long / short)` (truncated, as torchvision does), e.g.
    CelebA 178×218 → 32×39.
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return img.resize((new_w, new_h), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central `size`×`size` crop; offsets rounded like torchvision (round half to even)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_model_image(img: "Image.Image | np.ndarray", size: int, channels: int) -> np.ndarray:
    """Bring an image to the model's format.

    Args:
        img: PIL image (any mode) or uint8 array [H, W] or [H, W, C] with C in {1, 3}.
        size: output side length.
        channels: 3 (RGB) or 1 (PIL 'L' luma).

    Returns:
        uint8 array [size, size, channels].
    """
    if isinstance(img, np.ndarray):
        arr = img if img.ndim == 3 else img[:, :, None]
        if arr.shape[0] == size and arr.shape[1] == size and arr.shape[2] == channels:
            return arr  # fast path: in-memory datasets already at model format
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    mode = "RGB" if channels == 3 else "L"
    img = to_8bit(img)
    if img.mode != mode:
        # Grey → RGB replicates the channel; RGB → L is ITU-R 601-2 luma.
        img = img.convert("RGB").convert(mode) if mode == "L" else img.convert(mode)
    if img.size != (size, size):
        img = center_crop(resize_short_side(img, size), size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(size, size, channels)


def to_tensor_normalized(u8: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] → float32 [C, H, W] in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    x = np.ascontiguousarray(u8.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
    return (x - np.float32(0.5)) / np.float32(0.5)
