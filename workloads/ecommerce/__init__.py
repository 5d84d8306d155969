"""E-commerce federated workloads over a seeded multi-platform world (issue #5)."""
