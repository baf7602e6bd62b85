"""A clu MetricWriter over one Weights & Biases run: the run config, the same scalar keys and image grids as
TensorBoard. Its id is kept in WORKDIR/wandb_run_id.txt so a resumed run goes on in the same W&B run;
WANDB_MODE=offline keeps it on disk under WORKDIR/wandb."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from clu import metric_writers

RUN_ID_FILE = "wandb_run_id.txt"


def _run_id(workdir: str) -> str:
    """The W&B run id of this workdir: made at the first start, read back on every resume."""
    path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    run_id = uuid.uuid4().hex[:12]
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        f.write(run_id + "\n")
    return run_id


class WandbWriter(metric_writers.MetricWriter):
    """config.logging names the project, entity and run name (empty: W&B's defaults; the name: the workdir's)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        import wandb  # optional: validate() has checked that it is installed

        self._wandb = wandb
        fields = config.logging
        self.run = wandb.init(
            project=fields.wandb_project or None,
            entity=fields.wandb_entity or None,
            name=fields.wandb_name or os.path.basename(os.path.normpath(workdir)),
            id=_run_id(workdir),
            resume="allow",
            dir=workdir,
            config=config.to_dict(),
        )

    def _log(self, step: int, values: Mapping[str, Any]) -> None:
        self.run.log(dict(values), step=int(step))

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata=None) -> None:
        self._log(step, {k: np.asarray(v).tolist() for k, v in values.items()})

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._log(step, {k: float(v) for k, v in scalars.items()})

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        # clu images are (N, H, W, C); each key becomes one W&B image (or a list of them).
        logged = {}
        for key, batch in images.items():
            pictures = [self._wandb.Image(np.asarray(image)) for image in np.asarray(batch)]
            logged[key] = pictures[0] if len(pictures) == 1 else pictures
        self._log(step, logged)

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        self._log(step, {k: self._wandb.Video(np.asarray(v)) for k, v in videos.items()})

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        self._log(step, {k: self._wandb.Audio(np.asarray(v)[0], sample_rate=sample_rate) for k, v in audios.items()})

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._log(step, dict(texts))

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None) -> None:
        self._log(step, {k: self._wandb.Histogram(np.asarray(v)) for k, v in arrays.items()})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.run.config.update(dict(hparams), allow_val_change=True)

    def flush(self) -> None:
        pass  # W&B streams as it logs

    def close(self) -> None:
        self.run.finish()
