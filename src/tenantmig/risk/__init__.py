"""Risk review: what a migration will do to each tenant before it runs (plan, lint)."""
