"""The machine: devices, memory, disk space."""
