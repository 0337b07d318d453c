"""Semi-supervised data: the unlabeled pool (raw validation, preprocessing, loading), labeled/unlabeled splits, ramps.

Where things live (the contract the semi-supervised trainers rely on) is in :mod:`nnunet_ext.ssl.layout`.
"""
