"""binance."""
