"""Applications built on the pvaflow library: the monitor, status and control, ``pvaflow run``,
the demo, the PVA simulator and the local Kafka broker launcher."""
