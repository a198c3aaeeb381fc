"""Image decoding to 8-bit L or RGB (8/16-bit PNG/TIFF, DICOM, HDF5 arrays; L, RGB, RGBA, palette) and the
registry's preprocessing. Pixels deeper than 8 bits follow the dataset's ``PixelRules``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from probebench.data.layouts import decoder_for
from probebench.data.pixels import DICOM_SUFFIXES, PixelRules, read_dicom, to_uint8
from probebench.models.config import Preprocessing

def load_rgb(path: str | Path, draft: int | None = None, rules: PixelRules = PixelRules()) -> Image.Image:
    """Decode any supported image to 8-bit RGB (deeper data by ``rules``)."""
    img = load_image(path, draft, rules)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path, draft: int | None = None, rules: PixelRules = PixelRules(),
               warned: list | None = None) -> Image.Image:
    """Decode to 8-bit ``L`` (grayscale sources) or ``RGB``; grayscale becomes 3 channels after resizing.

    Resizing one band instead of three identical ones gives the same numbers at a third of the cost.
    ``draft``: for JPEGs, let the decoder scale down by a power of two while the shorter side stays at
    least ``draft`` pixels (PIL's ``Image.draft``), which makes large photographs far cheaper to decode.
    16-bit and 32-bit integer images, float images and DICOM files follow the dataset's pixel ``rules``.
    """
    layout = decoder_for(str(path))
    if layout is not None:  # an image that is not a file (an HDF5 array's row): its layout decodes it
        return layout.decode(str(path), rules)
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        arr = read_dicom(path, rules, warned)
        return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            scale = draft / min(img.size)
            img.draft(img.mode, (max(1, int(img.size[0] * scale + 0.999)), max(1, int(img.size[1] * scale + 0.999))))
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # deeper than 8 bits: the dataset's rule
            img = Image.fromarray(to_uint8(np.asarray(img), rules), mode="L")
        if img.mode in ("L", "LA", "1"):
            return img.convert("L")  # alpha dropped: the study's images carry none
        if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
        return img.convert("RGB")


class FloorCenterCrop:
    """Centre crop with the offset rounded down, as transformers' image processors crop (torchvision rounds half to
    even: a one-pixel shift when the margin is odd)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))


class ImageTransform:
    """PIL image (L or RGB) -> normalised float tensor (3, crop, crop): resize the shorter side (``squash``: both
    sides, as Hugging Face processors with a height x width size do), centre-crop, grayscale to 3 channels,
    normalise with the registry's mean/std."""

    def __init__(self, pre: Preprocessing):
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        interp = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[pre.interpolation]
        size = (pre.resize, pre.resize) if pre.resize_mode == "squash" else pre.resize
        crop = FloorCenterCrop(pre.crop) if pre.crop_offset == "floor" else transforms.CenterCrop(pre.crop)
        self.geometry = transforms.Compose([transforms.Resize(size, interpolation=interp), crop,
                                            transforms.ToTensor()])
        self.normalize = transforms.Normalize(pre.mean, pre.std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        t = self.geometry(img)
        return self.normalize(t.repeat(3, 1, 1) if t.shape[0] == 1 else t)


def make_transform(pre: Preprocessing) -> ImageTransform:
    return ImageTransform(pre)


def preprocess(path: str | Path, transform, draft: int | None = None,
               rules: PixelRules = PixelRules(), warned: list | None = None) -> torch.Tensor:
    return transform(load_image(path, draft, rules, warned))


class ImageDataset(torch.utils.data.Dataset):
    """Preprocessed images by manifest index: (image, index, ok, error); a bad file gives ok=False, a good one
    whose decoder warned (pydicom on a non-conformant file) gives ok=True and the warnings' kinds as its text.

    Errors travel back as data so that the main process can name the file (or skip it), whatever
    the number of DataLoader workers. ``rules`` (the manifest's pixel rules) is required, so that no
    caller can forget the dataset's intensity rule.
    """

    def __init__(self, paths: list[str], transform, crop: int, draft: int | None = None, *, rules: PixelRules):
        self.paths, self.transform, self.crop, self.draft, self.rules = paths, transform, crop, draft, rules

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        warned: list[str] = []
        try:  # a decoder's warnings travel in the error slot of a good image ("; "-joined kinds)
            return preprocess(self.paths[i], self.transform, self.draft, self.rules, warned), i, True, \
                "; ".join(warned)
        except Exception as exc:  # reported, with the file name, by the main process
            return torch.zeros(3, self.crop, self.crop), i, False, f"{type(exc).__name__}: {exc}"


def bad_image_error(path: str, error: str, hint: str = "use --skip-bad to skip such files and record them"):
    from probebench.errors import ProbebenchError

    return ProbebenchError(f"cannot read image {path}: {error} ({hint})")
