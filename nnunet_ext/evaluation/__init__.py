"""Evaluation beyond Dice: per-class metrics (``metrics``), paper protocols (``protocols``), folder evaluation
(``folders``), cross-validation comparison of trainers (``crossval``) and report files (``reports``)."""
