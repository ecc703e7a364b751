"""Reports: the statistics behind them (computed in Spark) apart from their rendering (figures, HTML)."""
