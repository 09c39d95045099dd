"""edgetier."""
