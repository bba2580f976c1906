"""Training: Cross Pseudo Supervision, and the supervised baseline that shares its loop.

Read :mod:`~cloudcps.train.method` first: the method, top to bottom. The rest:

- :mod:`~cloudcps.train.pseudo`: the losses and the pseudo-label policies the method reads.
- :mod:`~cloudcps.train.loop`: the :class:`Trainer` (iterations, metrics rows, validation,
  checkpoints, exact resumption) and :func:`run_training`, what ``cloudcps train`` calls.
- :mod:`~cloudcps.train.setup`: device, ranks and autocast; the datasets and batch streams of
  the configuration; the networks placed on the device; the class weights of the loss.
- :mod:`~cloudcps.train.schedule`: optimiser, learning-rate schedule, weight average (EMA),
  BatchNorm modes and recalibration.
- :mod:`~cloudcps.train.validation`: networks and their ensemble scored on the validation split.
- :mod:`~cloudcps.train.runfolder`: the run folder (lock, what a run may replace) and the
  configuration of a resumed run.
- :mod:`~cloudcps.train.logbook`: ``metrics.jsonl`` and TensorBoard rows.
- :mod:`~cloudcps.train.config`: :class:`TrainConfig`, its YAML; :mod:`~cloudcps.train.data`:
  tile folders, PASCAL VOC, augmentation and the resumable sampler.
"""

from __future__ import annotations

from cloudcps.train.config import TrainConfig as TrainConfig
from cloudcps.train.loop import Trainer as Trainer
from cloudcps.train.loop import TrainingInterrupted as TrainingInterrupted
from cloudcps.train.loop import TrainResult as TrainResult
from cloudcps.train.loop import run_training as run_training
from cloudcps.train.runfolder import RESUME_FIXED as RESUME_FIXED
from cloudcps.train.runfolder import RUN_FILES as RUN_FILES
from cloudcps.train.runfolder import resolve_config as resolve_config
from cloudcps.train.setup import batch_stream as batch_stream
from cloudcps.train.setup import build_data as build_data
from cloudcps.train.validation import pad_to_multiple as pad_to_multiple
from cloudcps.train.validation import validation_scores as validation_scores
