"""Training on a fold's labeled subset of ``splits_ssl.json`` (``nnUNetv2_ext_ssl_split``): the split of the
semi-supervised trainers and of their supervised-only baselines (:mod:`nnunet_ext.trainers.labeled_only`)."""

from __future__ import annotations

from pathlib import Path

from nnunet_ext.ssl.layout import SSL_SPLITS_FILE
from nnunet_ext.ssl.splits import SSLFold, load_ssl_fold


class LabeledSubsetSplit:
    """Mixin for an nnU-Net trainer: ``do_split`` narrows the fold's training cases to its labeled subset of
    ``splits_ssl.json`` (kept in ``self.ssl_fold``); validation cases are unchanged.

    Without the file, ``requires_ssl_split`` decides: True stops with a message saying what to run, False trains on
    every training case of the fold (``self.ssl_fold`` is then None).
    """

    requires_ssl_split: bool = True
    ssl_fold: SSLFold | None = None

    def do_split(self):
        train_keys, val_keys = super().do_split()
        self.ssl_fold = load_ssl_fold(self.preprocessed_dataset_folder_base, self.fold, train_keys, val_keys)
        if self.ssl_fold is None:
            if self.requires_ssl_split:
                path = Path(self.preprocessed_dataset_folder_base) / SSL_SPLITS_FILE
                raise FileNotFoundError(
                    f"{type(self).__name__} trains on the labeled subset of {path}, which does not exist; run "
                    f"nnUNetv2_ext_ssl_split -d {self.plans_manager.dataset_name} --labeled-fraction F first"
                )
            return train_keys, val_keys
        self.print_to_log_file(
            f"{SSL_SPLITS_FILE}: {len(self.ssl_fold.labeled)} labeled and {len(self.ssl_fold.unlabeled)} label-less "
            f"training cases in fold {self.fold}"
        )
        return self.ssl_fold.labeled, val_keys
