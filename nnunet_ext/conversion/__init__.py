"""Shared machinery of the dataset converters in ``dataset_conversion/`` (one thin script per source dataset).

- :mod:`.errors`: the named errors (missing partner, size mismatch, unexpected labels, unreadable, channel count);
- :mod:`.images`, :mod:`.labels`, :mod:`.case_ids`: reading/writing files, mask decoding and label remapping,
  safe case ids;
- :mod:`.cases`: one source case and how it is checked and written;
- :mod:`.writer`: validate the whole source, stage, verify with nnU-Net, move into place;
- :mod:`.cli`: the common command-line options; :mod:`.splits`: protocol re-splits;
- one module per dataset: :mod:`.synapse` (017), :mod:`.flare` (022), :mod:`.acdc` (027), :mod:`.isic` (080),
  :mod:`.busi` (081), :mod:`.oct` (082), :mod:`.thyroid` (083), :mod:`.mni152` (084, 2-D slices of the
  ICBM152 template in nilearn's wheel), :mod:`.amos` (218/219); :mod:`.images_masks` is the generic 2-D images +
  masks converter behind 080-083.
"""
