"""Optional integrations, each built on durable_trio's public hooks."""
