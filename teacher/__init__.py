"""The teacher: a self-describing exported ResNet-RS and batched soft-label prediction."""
