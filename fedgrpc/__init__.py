"""fedgrpc: federated DiLoCo training over gRPC."""
