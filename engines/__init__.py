"""Features, models (XGBoost, LSTM), inference backends and the model registry."""
