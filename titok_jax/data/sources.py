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

    Symbolic links are followed, but never in a loop: a folder is walked once (a link back to
    the root, to a class folder or to a folder already walked is skipped) and a file is listed
    once (by its real path; a link to a file already listed is skipped, so the first class
    folder, in class order, that holds it gives its label). A file's label is the class folder
    under the root that it was found in, whatever a link points at.
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
        class_dirs = [os.path.join(self.root, name) for name in self.class_names]
        # Every class folder belongs to its own class: a link from one class into another (or back up to the
        # root) is not walked again, so each image keeps the label of the class folder it sits in.
        walk = _ImageWalk(self.root, reserved_dirs=[d for d in class_dirs if os.path.isdir(d)])
        for label, class_dir in enumerate(class_dirs):
            if not os.path.isdir(class_dir):
                continue  # an eval folder may hold a subset of the classes
            files = walk.files(class_dir)
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
    """Sorted paths (as reached from `folder`) of the images under it; links followed, each file once."""
    return _ImageWalk(folder).files(folder)


DirKey = tuple[int, int]  # (st_dev, st_ino): one folder however it is reached, bind mounts included


def _dir_key(path: str) -> DirKey | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _is_ancestor_or_self(path: str, of: str) -> bool:
    return os.path.commonpath([path, of]) == path


def _sorted_entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError:
        return []  # as os.walk did: an unreadable folder is skipped


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


class _ImageWalk:
    """Walks folders below `root` following links, remembering what it saw so that no folder or file
    comes twice across calls to `files`: a link loop would otherwise repeat files until the path grows
    too long, and a link into another class folder would give its images the wrong label.

    `reserved_dirs` (e.g. the class folders) are walked only when named to `files`, never when reached
    through a link; nor is any folder that holds `root` (a link to `..` or `/`).
    """

    def __init__(self, root: str, reserved_dirs: Sequence[str] = ()):
        self._real_root = os.path.realpath(root)
        self._seen_dirs: set[DirKey] = set()
        for folder in (root, *reserved_dirs):
            if (key := _dir_key(folder)) is not None:
                self._seen_dirs.add(key)
        self._listed_files: set[str] = set()  # real paths; hard links stay distinct files, as before

    def files(self, folder: str) -> list[str]:
        found: list[tuple[str, str]] = []  # (path as reached from `folder`, real path)
        pending = [(folder, os.path.realpath(folder))]
        while pending:
            path, real = pending.pop()
            subfolders = []
            for entry in _sorted_entries(path):
                if entry.name.startswith("."):
                    continue
                child_real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                if _is_folder(entry):
                    if self._enter(entry.path, child_real):
                        subfolders.append((entry.path, child_real))
                elif _is_image(entry):
                    found.append((entry.path, child_real))
            pending.extend(reversed(subfolders))  # depth first in name order: the same walk on every host
        return self._new_files(sorted(found))

    def _enter(self, path: str, real: str) -> bool:
        """Whether to walk a subfolder: not one seen before, nor one that holds the root."""
        key = _dir_key(path)
        if key is None or key in self._seen_dirs or _is_ancestor_or_self(real, self._real_root):
            return False
        self._seen_dirs.add(key)
        return True

    def _new_files(self, found: list[tuple[str, str]]) -> list[str]:
        paths = []
        for path, real in found:
            if real not in self._listed_files:
                self._listed_files.add(real)
                paths.append(path)
        return paths


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
