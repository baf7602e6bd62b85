"""Random-access data sources: an image folder (with or without class folders) and TFDS array_record data sets.

Sources only index the data; decoding happens in the pipeline's map step, where
a bad image is skipped and counted instead of crashing a run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


LABEL_MODES = ("auto", "folders", "none")


class ImageFolder:
    """An image folder as a grain random-access source of `{"path": str, "label": int32}`.

    `labels` says where the labels come from:
    - "folders": `root/<class_name>/**/<image>`. Classes are the sorted subfolder names (or `class_names`,
      so that an eval folder shares the train folder's labels); a label is the index of its class. Loose
      files directly in the root are ignored.
    - "none": every image anywhere below the root, label 0 (one class: unconditional data).
    - "auto": "folders" when the root has subfolders, else the images directly in the root, label 0. A root
      holding both is refused: which one was meant cannot be told.
    Files are found case-insensitively by extension, hidden files skipped, and sorted, so record i is the
    same file on every host.

    Symbolic links are followed, but never in a loop: a folder is walked once (a link back to
    the root, to a class folder or to a folder already walked is skipped) and a file is listed
    once (by its real path; a link to a file already listed is skipped, so the first class
    folder, in class order, that holds it gives its label). A file's label is the class folder
    under the root that it was found in, whatever a link points at.
    """

    def __init__(self, root: str | os.PathLike, class_names: Sequence[str] | None = None, labels: str = "auto") -> None:
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Image folder {self.root!r} does not exist or is not a directory.")
        if class_names is not None and labels not in ("auto", "folders"):
            raise ValueError(
                f"ImageFolder: class_names name class folders, so labels must be 'folders', not {labels!r}."
            )
        # Class names given: the caller asks for class folders (an eval folder labelled like its train folder).
        self.layout = folder_layout(self.root, "folders" if class_names is not None else labels)
        self._paths: list[str] = []
        self._labels: list[int] = []
        if self.layout == "folders":
            self._list_classes(class_names)
        else:
            self.class_names: tuple[str, ...] = ()
            self._paths = _ImageWalk(self.root).files(self.root, recursive=self.layout == "recursive")
            self._labels = [0] * len(self._paths)
            if not self._paths:
                where = "anywhere below it" if self.layout == "recursive" else "directly in it"
                raise ValueError(
                    f"Image folder {self.root!r} has no images {where}: expected files with extensions "
                    f"{', '.join(IMAGE_EXTENSIONS)} (or class subfolders root/<class_name>/<image>)."
                )
        # Identifies the listing (not where it is mounted), so a resumed run notices changed data.
        self._digest = hashlib.sha1("\n".join(os.path.relpath(p, self.root) for p in self._paths).encode()).hexdigest()[
            :12
        ]

    def _list_classes(self, class_names: Sequence[str] | None) -> None:
        found = list_class_names(self.root)
        if not found:
            raise ValueError(
                f"Image folder {self.root!r} has no class subfolders; expected root/<class_name>/<image> "
                f"with extensions {', '.join(IMAGE_EXTENSIONS)}, or set data.labels='auto' (images directly in "
                "the root) or 'none' (every image below it) for data without classes."
            )
        self.class_names = tuple(class_names) if class_names is not None else tuple(found)
        unknown = sorted(set(found) - set(self.class_names))
        if unknown:
            raise ValueError(
                f"Image folder {self.root!r} has class folders that are not among the {len(self.class_names)} "
                f"given classes: {unknown[:10]}."
            )
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

    @property
    def num_classes(self) -> int:
        """Class folders, or 1 for data without classes (every label 0)."""
        return len(self.class_names) if self.layout == "folders" else 1

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"path": self._paths[index], "label": self._labels[index]}

    def __repr__(self) -> str:
        # grain compares this string when it restores an iterator; it leaves out the root so data may move.
        return f"ImageFolder(num_images={len(self)}, num_classes={self.num_classes}, listing_sha1={self._digest})"


def folder_layout(root: str, labels: str = "auto") -> str:
    """How `labels` reads `root`: "folders" (class subfolders), "flat" (the images directly in it, label 0)
    or "recursive" (every image below it, label 0). Looks at the root's own entries only, never deeper."""
    if labels not in LABEL_MODES:
        raise ValueError(f"Unknown labels={labels!r} (data.labels); valid: {', '.join(LABEL_MODES)}.")
    if labels == "folders":
        return "folders"
    if labels == "none":
        return "recursive"
    subfolders = list_class_names(root)
    loose = [e.name for e in _sorted_entries(root) if not e.name.startswith(".") and _is_image(e)]
    if subfolders and loose:
        raise ValueError(
            f"Image folder {root!r} holds both images ({len(loose)}, e.g. {loose[0]!r}) and subfolders "
            f"({', '.join(subfolders[:3])}{'...' if len(subfolders) > 3 else ''}): set data.labels='folders' to "
            "use the subfolders as classes and ignore the loose files, or data.labels='none' to read every "
            "image below the root with label 0."
        )
    return "folders" if subfolders else "flat"


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

    def files(self, folder: str, recursive: bool = True) -> list[str]:
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
                    if recursive and self._enter(entry.path, child_real):
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
