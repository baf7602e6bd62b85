"""Random-access data sources: an image folder and TFDS array_record data sets.

Sources only index the data; decoding happens in the pipeline's map step, where
a bad image is skipped and counted instead of crashing a run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageFolder:
    """`root/<class_name>/**/<image>` as a grain random-access source of `{"path": str, "label": int32}`.

    Classes are the sorted subfolder names (or `class_names`, so that an eval folder
    shares the train folder's labels); a label is the index of its class. Files are
    found recursively, case-insensitively by extension, hidden files skipped, and
    sorted, so record i is the same file on every host.
    """

    def __init__(self, root: str | os.PathLike, class_names: Sequence[str] | None = None):
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Image folder {self.root!r} does not exist or is not a directory.")
        found = list_class_names(self.root)
        if not found:
            raise ValueError(
                f"Image folder {self.root!r} has no class subfolders; expected root/<class_name>/<image> "
                f"with extensions {', '.join(IMAGE_EXTENSIONS)}."
            )
        self.class_names = tuple(class_names) if class_names is not None else tuple(found)
        unknown = sorted(set(found) - set(self.class_names))
        if unknown:
            raise ValueError(
                f"Image folder {self.root!r} has class folders that are not among the {len(self.class_names)} "
                f"given classes: {unknown[:10]}."
            )
        self._paths: list[str] = []
        self._labels: list[int] = []
        for label, name in enumerate(self.class_names):
            class_dir = os.path.join(self.root, name)
            if not os.path.isdir(class_dir):
                continue  # an eval folder may hold a subset of the classes
            files = image_files(class_dir)
            self._paths.extend(files)
            self._labels.extend([label] * len(files))
        if not self._paths:
            raise ValueError(
                f"Image folder {self.root!r} has no images: expected files with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)} in its class subfolders ({', '.join(found[:5])}...)."
            )
        # Identifies the listing (not where it is mounted), so a resumed run notices changed data.
        self._digest = hashlib.sha1("\n".join(os.path.relpath(p, self.root) for p in self._paths).encode()).hexdigest()[
            :12
        ]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"path": self._paths[index], "label": self._labels[index]}

    def __repr__(self) -> str:
        # grain compares this string when it restores an iterator; it leaves out the root so data may move.
        return f"ImageFolder(num_images={len(self)}, num_classes={len(self.class_names)}, listing_sha1={self._digest})"


def list_class_names(root: str) -> list[str]:
    """Sorted names of the non-hidden subfolders of `root`."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def image_files(folder: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(files)


_TFDS_HELP = (
    "Prepare it once with TensorFlow installed (pip install tensorflow-cpu), in the array_record format, e.g. "
    "`tfds build {name} --data_dir={data_dir} --file_format=array_record` (for imagenet2012 put "
    "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {data_dir}/downloads/manual first), "
    "or point data_dir (or $TFDS_DATA_DIR) at a folder that already holds {name}/<version>/*.array_record-*."
)


def tfds_source(name: str = "imagenet2012", split: str = "train", data_dir: str | None = None) -> Any:
    """A TFDS data set prepared as array_record, read without TensorFlow.

    Records are `{"image": encoded bytes, "label": int, ...}`: image decoding is
    skipped here and done by the pipeline, which handles bad images. Never
    downloads or prepares data; a missing data set is a clear error.
    """
    import tensorflow_datasets as tfds  # slow import; only runs that read TFDS pay for it

    shown_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    help_text = _TFDS_HELP.format(name=name, data_dir=shown_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # unknown name, bad config string; tfds appends a list of every data set
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"TFDS has no data set {name!r}: {first_line}") from error
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}. {help_text}")
    file_format = builder.info.file_format
    if file_format is None or file_format.value != "array_record":
        raise ValueError(
            f"TFDS data set {name!r} in {builder.data_dir!r} is stored as {file_format}, but reading without "
            f"TensorFlow needs array_record. {help_text}"
        )
    if "image" not in builder.info.features:
        raise ValueError(f"TFDS data set {name!r} has no 'image' feature (features: {list(builder.info.features)}).")
    decoders = {"image": tfds.decode.SkipDecoding()}
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except (KeyError, ValueError) as error:
        splits = ", ".join(builder.info.splits) or "none"
        raise ValueError(f"TFDS data set {name!r} has no split {split!r} (splits: {splits}): {error}") from error
