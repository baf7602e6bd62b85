"""A list file of image paths (with or without integer labels) as a grain random-access source.

For data that is not laid out as class folders: one image path per line, optionally followed
by whitespace, a tab or a comma and a non-negative integer label. Only the list is read here:
files are neither opened nor checked (a list may hold millions of paths on network storage),
so a missing or broken file is skipped and counted by the pipeline's decode step.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import numpy as np

# The last field of a line, after whitespace or commas; a path may hold spaces and commas itself.
_LAST_FIELD = re.compile(r"^(?P<path>.*?)[\s,]+(?P<field>[^\s,]+)$")
# Anything that looks like a number is meant as a label (so "-1" or "2.5" is a bad label, not part of a path).
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_LABEL = re.compile(r"^\+?\d+$")
_MAX_LABEL = 2**31 - 1  # labels travel as int32


class ImageList:
    """`list_file` as a source of `{"path": str, "label": int}`.

    Blank lines and lines starting with '#' are ignored. Relative paths are relative to the list
    file's folder. Either every line has a label or none has (then every label is 0). A path's last
    field counts as a label when it looks like a number, so "my cat.jpg" is one path but "scan 7"
    is the path "scan" with label 7.
    """

    def __init__(self, list_file: str | os.PathLike) -> None:
        self.list_file = os.path.abspath(os.fspath(list_file))
        if not os.path.isfile(self.list_file):
            raise FileNotFoundError(f"Image list {self.list_file!r} does not exist or is not a file.")
        base = os.path.dirname(self.list_file)
        paths: list[str] = []
        labels: list[int] = []
        digest = hashlib.sha1()
        first_line, labelled = 0, False
        # utf-8-sig drops the byte-order mark spreadsheets write; surrogateescape keeps non-UTF-8 file names usable.
        with open(self.list_file, encoding="utf-8-sig", errors="surrogateescape") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                path, label = self._parse(text, number)
                if not first_line:
                    first_line, labelled = number, label is not None
                elif (label is not None) != labelled:
                    raise self._mixed(number, first_line, labelled)
                paths.append(os.path.join(base, path))  # join keeps an absolute path as it is
                labels.append(0 if label is None else label)
                # The listing as written (not where the list lives), so a resumed run notices changed data.
                digest.update(f"{path}\t{label}\n".encode("utf-8", "surrogateescape"))
        if not paths:
            raise ValueError(
                f"Image list {self.list_file!r} holds no image paths (only blank lines and '#' comments); put one "
                "image path per line, optionally followed by an integer label."
            )
        self.labelled = labelled
        self._paths = paths
        self._labels = np.asarray(labels, np.int32)  # a millions-long list of Python ints costs 7x more
        self._digest = digest.hexdigest()[:12]

    def _parse(self, text: str, number: int) -> tuple[str, int | None]:
        match = _LAST_FIELD.match(text)
        if match is None or not _NUMBER.match(match["field"]):
            return text, None
        field = match["field"]
        if not _LABEL.match(field) or int(field) > _MAX_LABEL:
            raise ValueError(
                f"Image list {self.list_file!r} line {number}: label {field!r} is not an integer in [0, {_MAX_LABEL}]."
            )
        if not match["path"]:
            raise ValueError(f"Image list {self.list_file!r} line {number}: no image path before the label {field}.")
        return match["path"], int(field)

    def _mixed(self, number: int, first_line: int, labelled: bool) -> ValueError:
        has, lacks = ("no label", "has one") if labelled else ("a label", "has none")
        return ValueError(
            f"Image list {self.list_file!r} line {number} has {has} but line {first_line} {lacks}: label every line "
            "or none (a label is a non-negative integer after the path; start a header line with '#')."
        )

    @property
    def num_classes(self) -> int:
        """Largest label + 1, or 1 for a list without labels."""
        return int(self._labels.max()) + 1

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"path": self._paths[index], "label": int(self._labels[index])}

    def __repr__(self) -> str:
        # grain compares this string when it restores an iterator; it leaves out the list's location so data may move.
        return f"ImageList(num_images={len(self)}, num_classes={self.num_classes}, listing_sha1={self._digest})"
