"""``tradingd`` command line: one sub-command per module, imported only when used (torch stays unloaded
unless a command needs it)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). Each module defines add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.app", "run the trading daemon (embedded default: local simulated venue, paper broker)"),
    "venue": ("daemon.venue.server", "serve a local Binance-format venue (simulator or recording replay)"),
    "book-check": ("daemon.binance.bookcheck", "rebuild the book from a recording and check it against bookTicker"),
    "record": ("daemon.record_cli", "record raw frames from a venue to rotating compressed files"),
    "train": ("daemon.train_cli", "train XGBoost and LSTM models and publish them to the registry"),
    "doctor": ("engines.doctor", "report Python/CPU/GPU/CUDA/TensorRT/XGBoost/ONNX Runtime and chosen backends"),
    "backtest": ("daemon.backtest.cli", "backtest the live pipeline over klines or a recording, with a report"),
    "hpo": ("research.hpo", "hyper-parameter search (Optuna) on a universe folder, inner walk-forward"),
}
# `train`/`backtest` with --data DIR (a folder of SYMBOL-TF.csv.gz) run the universe research loop instead
UNIVERSE_COMMANDS = {"train": "research.cli_train", "backtest": "daemon.backtest.universe"}


def _universe_module(name: str, argv: list[str]) -> str | None:
    if name not in UNIVERSE_COMMANDS:
        return None
    if name == "train" and _has(argv, "--store") and not _has(argv, "--symbol"):
        return "daemon.store_universe"   # every symbol the daemon recorded, as a universe
    from pathlib import Path
    for i, a in enumerate(argv):
        val = argv[i + 1] if a == "--data" and i + 1 < len(argv) else a[7:] if a.startswith("--data=") else None
        if val is not None and Path(val).is_dir():
            return UNIVERSE_COMMANDS[name]
    return None


def _has(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _top_help() -> str:
    lines = ["usage: tradingd COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "tradingd COMMAND --help for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from daemon import __version__
        print(f"tradingd {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"tradingd: unknown command {name!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module_name = _universe_module(name, argv[1:]) or module_name
    # stdout belongs to the command's output (JSON summaries); logs go to stderr until a command reconfigures.
    from daemon.logs import configure
    configure(level="info", json=False)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"tradingd: command {name!r} is not available in this build ({e})", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"tradingd {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
