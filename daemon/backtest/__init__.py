"""``tradingd backtest``, split by job: options.py (options, walk-forward windows, the short-file rule),
predictions.py (the backtest's engine sets), training.py (walk-forward training, streamed from forked processes),
klines.py (the klines simulation through the live pipeline on a synthetic book), recording.py (a raw recording
replayed through the live path), report.py (metrics, trades.csv, charts), cli.py (the command)."""
