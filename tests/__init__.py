"""fp8fl package."""
