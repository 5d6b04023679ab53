"""Pure trading logic: DollarProfitOptimizer, risk limits, peak detection, performance metrics."""
