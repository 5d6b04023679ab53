"""tradingd: the async shell (feeds, venue, broker, store, HTTP, systemd) around pure cores."""
__version__ = "0.1.0"
