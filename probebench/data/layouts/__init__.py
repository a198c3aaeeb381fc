"""Dataset layouts: how releases store their images. One module per layout, one entry here; a spec's ``kind``
names the entry and its ``[<kind>]`` table holds the layout's keys."""

from __future__ import annotations

from probebench.data.layouts.base import Layout, Row
from probebench.data.layouts.folder import FOLDER
from probebench.data.layouts.hdf5 import HDF5
from probebench.data.layouts.table import CSV

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (FOLDER, CSV, HDF5)}

__all__ = ["LAYOUTS", "Layout", "Row", "decoder_for"]


def decoder_for(path: str) -> Layout | None:
    """The layout whose images are URIs rather than files, when ``path`` is one of them."""
    return next((layout for layout in LAYOUTS.values() if not layout.files and layout.owns(path)), None)
