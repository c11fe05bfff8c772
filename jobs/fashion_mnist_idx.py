"""Finding and reading the Fashion-MNIST IDX files (for jobs/fashion_mnist.py).

Search order: ``--data-dir``, ``$FASHION_MNIST_DIR``, the Keras cache
(``~/.keras/datasets/fashion-mnist``), the Debian package's
``/usr/share/datasets/fashion-mnist``, and last Keras's own download.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNT = {"train": 60000, "test": 10000}
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FIX_HINT = ("re-download it (delete the file and run again to use Keras's download), "
            "or `apt-get install --reinstall dataset-fashion-mnist`, "
            "or point --data-dir / $FASHION_MNIST_DIR at a good copy")
GET_HINT = ("three ways to fix it: (1) `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "(2) allow this machine to reach storage.googleapis.com once (Keras downloads it into "
            "~/.keras/datasets/fashion-mnist), or (3) copy the four IDX files "
            "(train-images-idx3-ubyte.gz, ...) into a folder and pass --data-dir FOLDER "
            "or set FASHION_MNIST_DIR")


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # uint8 (N, 28, 28)
    y_train: np.ndarray  # uint8 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def candidate_dirs(data_dir: str | None) -> list[tuple[str, Path]]:
    out = []
    if data_dir:
        out.append(("--data-dir", Path(data_dir)))
    if os.environ.get("FASHION_MNIST_DIR"):
        out.append(("$FASHION_MNIST_DIR", Path(os.environ["FASHION_MNIST_DIR"])))
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    out.append(("Keras cache", keras_home / "datasets" / "fashion-mnist"))
    out.append(("Debian package", Path(DEBIAN_DIR)))
    return out


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load(data_dir: str | None = None, allow_download: bool = True) -> Dataset:
    """Load the four arrays from the first directory that has all four files.

    An explicitly given directory (flag or env var) must be complete: silently
    falling through to another copy would hide the user's mistake.
    """
    for origin, directory in candidate_dirs(data_dir):
        paths = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(paths.values()):
            return _read_all(paths, f"{origin} {directory}")
        if origin in ("--data-dir", "$FASHION_MNIST_DIR"):
            missing = [FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
            raise DataError(f"{origin} {directory} lacks {', '.join(missing)}; {FIX_HINT}")
    tried = "; ".join(f"{origin} {directory}" for origin, directory in candidate_dirs(data_dir))
    if not allow_download:
        raise DataError(f"Fashion-MNIST not found (looked in: {tried}); {GET_HINT}")
    import keras  # the download path only
    try:
        keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # network errors come in many types
        raise DataError(f"Fashion-MNIST not found (looked in: {tried}; Keras's download failed: "
                        f"{type(exc).__name__}: {str(exc)[:200]}); {GET_HINT}") from exc
    return load(data_dir, allow_download=False)


def _read_all(paths: dict[str, Path], source: str) -> Dataset:
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{paths[f'{split}_images']}: expected 28x28 images, got shape "
                            f"{images.shape}; {FIX_HINT}")
        if len(images) != len(labels) or len(images) != EXPECTED_COUNT[split]:
            raise DataError(f"{paths[f'{split}_images']}: {len(images)} images and {len(labels)} "
                            f"labels, expected {EXPECTED_COUNT[split]} of each; {FIX_HINT}")
        if labels.max() > 9:
            raise DataError(f"{paths[f'{split}_labels']}: labels must be 0-9; {FIX_HINT}")
    return Dataset(arrays["train_images"], arrays["train_labels"],
                   arrays["test_images"], arrays["test_labels"], source)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises these on truncation
        raise DataError(f"{path}: cannot be read ({exc}); the file is damaged or truncated; "
                        f"{FIX_HINT}") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, not an IDX file; {FIX_HINT}")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path}: bad IDX header (expected unsigned-byte data with 1 or 3 "
                        f"dimensions); {FIX_HINT}")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated: header promises {expected} bytes of data for shape "
                        f"{shape}, file has {len(raw) - header}; {FIX_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
