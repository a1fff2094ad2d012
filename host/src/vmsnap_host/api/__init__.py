"""The control plane API: vmsnap.host.v1.VMSnapshotService."""
