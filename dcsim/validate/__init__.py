"""Forecasts checked against real replays: build a workload, replay it on a device with the engine
calibration measured, simulate the same requests and compare."""
