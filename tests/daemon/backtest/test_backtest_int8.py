"""`tradingd backtest --lstm-backend onnxruntime-cpu-int8 --lstm-int8 static` on real BTCUSDT klines: every
walk-forward window's LSTM gets its INT8 graph (calibrated on that window's training windows) and the window's
predictions come from it (the precision is passed through, not silently fp32)."""
from __future__ import annotations

import json



def _write_csv(path, k, n):
    cols = (k.open, k.high, k.low, k.close, k.volume)
    with open(path, "w") as f:
        f.write("open_time_ms,open,high,low,close,volume\n")
        for i in range(n):
            f.write(",".join([str(int(k.open_ns[i]) // 1_000_000)] + [repr(float(c[i])) for c in cols]) + "\n")


def _run(cli, data, out, workdir, backend, method):
    rc = cli(["backtest", "--data", str(data), "--report", str(out), "--timeframes", "5m", "--models", "lstm",
              "--train-days", "3", "--test-days", "1.5", "--warm-days", "0.5", "--lstm-hidden", "8",
              "--lstm-seq-len", "16", "--lstm-backend", backend, "--lstm-int8", method, "--no-baseline",
              "--serial", "--workdir", str(workdir)])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_backtest_passes_the_int8_precision_through(btc_klines_path, tmp_path):
    from daemon.cli import main as cli
    from engines.data import load_klines_csv
    k = load_klines_csv(btc_klines_path)
    data = tmp_path / "BTC_USDT-1m_6d.csv"
    _write_csv(data, k, 6 * 1440)
    m8 = _run(cli, data, tmp_path / "r8", tmp_path / "w8", "onnxruntime-cpu-int8", "static")
    info = m8["info"]
    assert info["options"]["lstm_backend"] == "onnxruntime-cpu-int8" and info["options"]["lstm_int8"] == "static"
    wins = info["windows"]
    assert len(wins) >= 2
    assert all(w["timeframes"]["5m"]["backends"] == {"lstm": "onnxruntime-cpu-int8"} for w in wins)
    for w in sorted((tmp_path / "w8" / "models").glob("w*/5m/lstm")):
        meta = json.loads((w / "lstm.json").read_text())
        assert meta["int8"]["method"] == "static" and meta["int8"]["calibration_windows"] > 0
        assert "lstm.int8.onnx" in meta["files"]
    # the same run on the fp32 graph: same seeds, so the same weights; the predictions differ only by quantization
    m32 = _run(cli, data, tmp_path / "r32", tmp_path / "w32", "onnxruntime-cpu", "static")
    assert all(w["timeframes"]["5m"]["backends"] == {"lstm": "onnxruntime-cpu"} for w in m32["info"]["windows"])
    for w in sorted((tmp_path / "w8" / "models").glob("w*/5m/lstm")):
        twin = tmp_path / "w32" / w.relative_to(tmp_path / "w8")
        assert (w / "lstm.onnx").read_bytes() == (twin / "lstm.onnx").read_bytes()
        # an fp32 run spends no time quantizing what it will not run
        assert json.loads((twin / "lstm.json").read_text())["int8"]["method"] == "none"
