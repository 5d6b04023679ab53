"""Universe research loop (issue #16): a folder of ``SYMBOL-TF.csv.gz`` -> aligned panels -> per-symbol and
cross-sectional features -> pooled models -> walk-forward IC / strategy evaluation, HPO and a learned ensemble."""
