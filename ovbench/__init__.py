"""ovbench: a benchmark harness for open-vocabulary semantic segmentation of remote-sensing images."""

__version__ = "0.1.0"
