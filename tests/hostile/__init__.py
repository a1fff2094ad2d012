"""Hostile drivers: each misbehaviour of a storage driver as a process, and the host's answer to it."""
