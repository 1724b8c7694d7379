"""Reading a picture file (PNG or JPEG): the one way bfn reads every picture (``--data`` image folders,
inpainting's ``--image`` and ``--mask``).

Pillow decodes it; the EXIF orientation a camera or phone recorded is applied (the picture is
turned the way it is shown); any mode becomes grey or RGB (palette, 1-bit, CMYK and YCbCr converted,
alpha dropped); and the values are scaled by what their type can hold (255 for 8-bit pictures,
65535 for 16-bit ones), never guessed from the values themselves, so a dark picture stays dark.
A picture too large to be an example (more pixels than Pillow's decompression-bomb limit) is
refused from its header, before it is decoded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bfncli.errors import UserError

SUFFIXES = (".png", ".jpg", ".jpeg")


def read_picture(path: Path, what: str) -> Tensor:
    """The picture at ``path`` as (H, W, C) uint8, C = 1 (grey) or 3 (RGB). ``what`` names it in errors."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # checked here instead, with a message that says what is wrong
        with Image.open(path) as opened:
            width, height = opened.size
            if limit and width * height > limit:
                raise UserError(f"{what} '{path}' is too large ({width}x{height} pixels, more than {limit:,}); bfn "
                                "trains on and fills in small pictures: scale it down first")
            picture = ImageOps.exif_transpose(opened)
            picture.load()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{what} '{path}' does not exist") from None
    except UnidentifiedImageError as err:
        raise UserError(f"cannot read {what} '{path}' ({type(err).__name__}); is it a PNG or JPEG file?") from None
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise UserError(f"cannot read {what} '{path}' ({reason}); is it a complete PNG or JPEG file?") from None
    except (ValueError, SyntaxError) as err:  # Pillow's other ways of saying a file is damaged
        raise UserError(f"cannot read {what} '{path}' ({type(err).__name__}: {str(err)[:80]}); is it a valid PNG "
                        "or JPEG?") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    mode = picture.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):  # 16-bit grey (PNG): 0..65535
        array = np.asarray(picture, dtype=np.int64)
        grey = np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8)
        return torch.from_numpy(grey).unsqueeze(-1)
    if mode == "F":
        raise UserError(f"{what} '{path}' holds floating-point pixels; save it as an 8- or 16-bit PNG or a JPEG")
    if mode in ("1", "L", "LA") or (mode == "P" and _grey_palette(picture)):
        picture = picture.convert("L")
    else:
        picture = picture.convert("RGB")
    pixels = torch.from_numpy(np.array(picture, dtype=np.uint8))  # a copy: Pillow's buffer is its own
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(-1)
    if pixels.shape[-1] == 3 and torch.equal(pixels[..., 0], pixels[..., 1]) and torch.equal(pixels[..., 1],
                                                                                              pixels[..., 2]):
        pixels = pixels[..., :1]  # grey stored as RGB
    return pixels


def _grey_palette(picture) -> bool:
    palette = picture.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
