"""dcsim: forecast energy, throughput per watt and queueing latency of LLM inference fleets."""

__version__ = "0.1.0"
