"""CelebA (aligned and cropped, 178×218) from its folder or the official zip.

Accepted `root`, checked in this order:
  1. the zip `img_align_celeba.zip` itself (any *.zip);
  2. a folder containing `img_align_celeba/` → that folder's images;
  3. a folder containing `img_align_celeba.zip` → the zip;
  4. any other folder → all images below it (e.g. the official code's ImageFolder root `data/celeba`).
Images are read lazily (a zip is opened once per process). CoopFlow uses all 202,599
images, no split; Resize(32) on the short side (178×218 → 32×39) then CenterCrop(32). Labels are 0.
"""
from __future__ import annotations

import io
import os
import zipfile
import zlib

from PIL import Image

from ..errors import DatasetError
from .base import ImageDataset
from .folder import check_split, is_image_name, list_images, open_image

ZIP_NAME = "img_align_celeba.zip"
FOLDER_NAME = "img_align_celeba"
URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped Images)"


class CelebADataset(ImageDataset):
    """All CelebA images, lazily decoded from a folder or from the zip."""

    def __init__(self, root: str, split: str, image_size: int, channels: int, hflip: bool):
        super().__init__("celeba", split, image_size, channels, hflip)
        check_split(split, "CelebA (CoopFlow trains and evaluates on all images)")
        self._zip = None
        self._zip_pid = None
        if os.path.isfile(root) and root.lower().endswith(".zip"):
            self._init_zip(root)
        elif os.path.isdir(os.path.join(root, FOLDER_NAME)):
            self._init_folder(os.path.join(root, FOLDER_NAME))
        elif os.path.isfile(os.path.join(root, ZIP_NAME)):
            self._init_zip(os.path.join(root, ZIP_NAME))
        elif os.path.isdir(root):
            self._init_folder(root)
        else:
            raise DatasetError(f"CelebA not found at {root}: expected {ZIP_NAME} or a folder with "
                               f"{FOLDER_NAME}/ (download {ZIP_NAME} from {URL})")

    def _init_folder(self, folder: str) -> None:
        self.source, self.path = "folder", folder
        self.files = list_images(folder)
        if not self.files:
            raise DatasetError(f"CelebA folder {folder} contains no images; expected "
                               f"{FOLDER_NAME}/*.jpg or {ZIP_NAME} (from {URL})")

    def _init_zip(self, path: str) -> None:
        self.source, self.path = "zip", path
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/") and is_image_name(n)
                         and not n.startswith("__MACOSX/")]
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DatasetError(f"CelebA zip {path} is corrupt or unreadable ({type(e).__name__}: "
                               f"{e}); re-download {ZIP_NAME} from {URL}") from None
        if not names:
            raise DatasetError(f"CelebA zip {path} contains no images; expected {ZIP_NAME} from {URL}")
        self.files = sorted(names)

    def __len__(self) -> int:
        return len(self.files)

    def _label(self, i: int) -> int:
        return 0

    def _raw(self, i: int) -> Image.Image:
        name = self.files[i]
        if self.source == "folder":
            path = os.path.join(self.path, name)
            with open(path, "rb") as fh:
                return open_image(fh, path)
        # One handle per process: a ZipFile must not be shared across forked workers.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        where = f"{self.path}:{name}"
        try:
            data = self._zip.read(name)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
            raise DatasetError(f"cannot read {where} ({type(e).__name__}: {e}); "
                               f"re-download {ZIP_NAME} from {URL}") from None
        return open_image(io.BytesIO(data), where)

    def __getstate__(self):
        # Zip handles cannot be pickled (spawn-based worker start); reopen lazily.
        state = self.__dict__.copy()
        state["_zip"], state["_zip_pid"] = None, None
        return state
