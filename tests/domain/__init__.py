"""The domain layer: aggregated steps, waiting readers (leader mode), elastic scaling."""
