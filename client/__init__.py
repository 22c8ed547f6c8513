"""TrimCache package."""
